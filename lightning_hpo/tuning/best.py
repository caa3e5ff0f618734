"""What ``best.yaml`` holds: the config the best trial trained, not today's configs.

A study can be rerun with a narrower search space, another ``--epochs`` or another run
config; its best trial still trained what it trained. That config is read back from the
trial's own run folder: each seed's ``config.yaml`` (``training.runs``), put together with
all the trial's seeds in its order. Where the folder is not on this machine (the trial ran
on another), the current run config with the trial's parameters merged in stands in, with
one warning line when it is known to differ from what the trial trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from lightning_hpo.attrs import EPOCHS_ATTR, GROUP_NAME, N_SEEDS_ATTR, RUN_DIR, SEEDS_ATTR
from lightning_hpo.config.optimize import OptimizeConfig
from lightning_hpo.config.run import RunConfig
from lightning_hpo.config.yamlio import load_yaml
from lightning_hpo.errors import ConfigError
from lightning_hpo.live.screen import short
from lightning_hpo.training.files import CONFIG_FILE
from lightning_hpo.tuning.study import STUDY_SUFFIX

SEEDS, PROJECT, EPOCHS = "seeds", "project", "epochs"


def best_trial_config(
    run: RunConfig, opt: OptimizeConfig, trial: FrozenTrial, study_folder: Path, path: Path
) -> tuple[dict[str, Any], str | None]:
    """The run config mapping ``trial`` trained, for ``path`` (best.yaml), and a warning line
    or None.

    Its run folder is looked for where it ran (``RUN_DIR``) and in ``study_folder`` (the
    study's folder under this run's output, should ``runs/`` have moved).
    """
    folders = [Path(trial.user_attrs[RUN_DIR])] if trial.user_attrs.get(RUN_DIR) else []
    if trial.user_attrs.get(GROUP_NAME):
        folders.append(study_folder / trial.user_attrs[GROUP_NAME])
    for folder in folders:
        trained = trained_config(trial, folder, run.seeds)
        if trained is not None:
            return trained, None
    rebuilt = opt.merge(run, trial.params).to_dict()
    differences = _differences(run, opt, trial)
    if not differences:
        return rebuilt, None
    where = trial.user_attrs.get(RUN_DIR, "?")
    return rebuilt, (
        f"warning: {path} is the current configs with trial {trial.number}'s parameters (its "
        f"run folder {where} is not on this machine, or not whole), but that trial trained "
        f"{'; '.join(differences)}: copy that folder beside it and rerun to write that config"
    )


def trained_config(
    trial: FrozenTrial, folder: Path, current_seeds: list[int]
) -> dict[str, Any] | None:
    """The config the trial trained, from its seeds' ``config.yaml`` in ``folder``, or None
    where a seed's is missing or unreadable, or the seeds' configs disagree beyond their seed."""
    configs: dict[int, dict[str, Any]] = {}
    for file in sorted(folder.glob(f"*/{CONFIG_FILE}")):
        try:
            seed = int(file.parent.name)
            data = load_yaml(file)
        except (ValueError, ConfigError):
            continue  # not a seed's folder, or not a config this tool wrote
        if data.get(SEEDS) == [seed]:
            configs[seed] = data
    seeds = _seeds(trial, set(configs), current_seeds)
    if seeds is None:
        return None
    rest = [{k: v for k, v in configs[s].items() if k != SEEDS} for s in seeds]
    if any(other != rest[0] for other in rest):
        return None
    first = configs[seeds[0]]
    project = str(first.get(PROJECT, ""))
    return first | {PROJECT: project.removesuffix(STUDY_SUFFIX), SEEDS: seeds}


def _seeds(trial: FrozenTrial, found: set[int], current_seeds: list[int]) -> list[int] | None:
    """The trial's seeds in its order (``SEEDS_ATTR``), or None where ``found`` lacks one.

    A folder can hold more (a retry copies the folder of the trial it continues). For a
    trial from before the seeds were recorded: all found, as many as it trained
    (``N_SEEDS_ATTR``), in the current run config's order where it names them, then ascending.
    """
    recorded = trial.user_attrs.get(SEEDS_ATTR)
    if isinstance(recorded, list):
        return list(recorded) if recorded and set(recorded) <= found else None
    expected = trial.user_attrs.get(N_SEEDS_ATTR)
    if not found or (expected is not None and len(found) != expected):
        return None
    known = [s for s in current_seeds if s in found]
    return known + sorted(found - set(known))


def _differences(run: RunConfig, opt: OptimizeConfig, trial: FrozenTrial) -> list[str]:
    """What the trial trained that the current configs do not say, as far as the trial's
    record tells: parameters no longer searched, its epochs, its number of seeds."""
    searched = {p.name for p in opt.params}
    lost = [f"{k}={short(v)}" for k, v in trial.params.items() if k not in searched]
    differences = [f"{', '.join(lost)} (no longer searched)"] if lost else []
    epochs = trial.user_attrs.get(EPOCHS_ATTR)
    if epochs is not None and epochs != run.epochs:
        differences.append(f"{EPOCHS} {epochs} (now {run.epochs})")
    n_seeds = trial.user_attrs.get(N_SEEDS_ATTR)
    if n_seeds is not None and n_seeds != len(run.seeds):
        differences.append(f"{n_seeds} seeds (now {len(run.seeds)})")
    return differences
