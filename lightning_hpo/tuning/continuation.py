"""A retried trial continues; it does not start over.

A trial whose worker died (a heartbeat, the dead-worker check) or was interrupted (Ctrl-C,
SIGTERM: a SLURM time limit or preemption, a spot instance's notice) has its parameters
queued once more (``storage.stale.queue_retry``). When the retry runs and the dead trial's
run folder is reachable (the same machine, or a shared file system), the retry copies it
into its own folder and continues it; the intermediate values the dead trial reported for
the epochs its checkpoints hold are reported again, so the pruner sees the same curve;
training continues at the next epoch:

- fused seeds (and a single seed) each resume from their ``last.ckpt``;
- seeds trained one after another (the curve is the first one's) continue where each
  stood: a finished seed is kept (its ``result.json``), the seed in progress resumes from
  its ``last.ckpt``, and a seed not yet started starts then.

Where the folder is not reachable, or holds nothing to continue, the retry starts over and
says why. Either way the trial records what happened (user attr ``retry``), and its
progress line shows it.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from lightning_hpo.attrs import CURVE_ATTR, RETRY_OF, RUN_DIR
from lightning_hpo.config.run import RunConfig
from lightning_hpo.training.files import CONFIG_FILE, LAST, checkpoint_file


@dataclass(frozen=True)
class Continuation:
    """Where a trial starts: ``epoch`` epochs of its curve already trained (0: from
    scratch), why it starts over, and for seeds trained one after another where each
    continues (``seeds``)."""

    of: int | None = None  # the trial this one runs again
    epoch: int = 0
    why: str | None = None  # when a retry starts over
    seeds: str | None = None  # e.g. "seed 1 kept (finished), seed 2 continued at epoch 8"

    def record(self) -> dict[str, object] | None:
        """What the trial stores (user attr ``retry``), None for a first run."""
        if self.of is None:
            return None
        if self.epoch:
            said = {"seeds": self.seeds} if self.seeds else {}
            return {"of": self.of, "continued_at_epoch": self.epoch} | said
        return {"of": self.of, "started_over": self.why}


def _last_epoch(run_dir: Path) -> tuple[int, str | None]:
    """Epochs the seed in ``run_dir`` trained, by its ``last.ckpt``; 0 and why where it has
    no usable one."""
    import torch

    path = checkpoint_file(run_dir, LAST)
    if not path.is_file():
        return 0, f"has no {path.parent.name}/{path.name}"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"]) + 1, None
    except Exception as exc:  # noqa: BLE001 - a truncated file: that seed starts over
        return 0, f"has a {path.name} that does not load ({exc.__class__.__name__})"


def _epochs_done(seeds: list[int], run_dirs: list[Path]) -> tuple[int, str | None]:
    """Fused seeds (or one): the epoch the retry's reported curve continues at, the
    furthest seed's ``last.ckpt``; 0 and why when a seed has none. A kill between fused
    seeds' writes leaves some seeds an epoch behind; the furthest group resumes first and
    reports (``training.runs._resume_fused``), and the dead trial had reported that epoch
    before any seed's checkpoint was written."""
    done = []
    for seed, run_dir in zip(seeds, run_dirs):
        epochs, why = _last_epoch(run_dir)
        if why is not None:
            return 0, f"seed {seed} {why}"
        done.append(epochs)
    return max(done, default=0), None


def _one_after_another(seeds: list[int], run_dirs: list[Path]) -> tuple[int, str | None, str]:
    """Seeds trained one after another: the epoch the reported curve (the first seed's)
    continues at (0 and why where there is nothing to continue), and where each seed
    continues. A seed that finished is kept (``training.runs.fit_run`` reads its result
    back), one in progress resumes from its ``last.ckpt``, the others start from scratch."""
    from lightning_hpo.training.results import load_result

    said: list[str] = []
    curve: tuple[int, str | None] | None = None
    for seed, run_dir in zip(seeds, run_dirs):
        kept = load_result(run_dir)
        epochs, why = (len(kept.history), None) if kept is not None else _last_epoch(run_dir)
        if kept is not None:
            said.append(f"seed {seed} kept (finished)")
        elif epochs:
            said.append(f"seed {seed} continued at epoch {epochs}")
        else:
            said.append(f"seed {seed} from the start")
        if curve is None:  # the first seed's is the reported curve
            curve = epochs, None if why is None else f"seed {seed} {why}"
    assert curve is not None
    return *curve, ", ".join(said)


def _changed(source: Path, cfg: RunConfig) -> list[str]:
    """The run-config keys whose values differ from what the trial in ``source`` trained
    with (its first seed's ``config.yaml``; a rerun may have changed ``--epochs``, say)."""
    from lightning_hpo.config.class_paths import shareable
    from lightning_hpo.config.yamlio import load_yaml

    saved_files = sorted(source.glob(f"*/{CONFIG_FILE}"))
    if not saved_files:
        return []
    saved = load_yaml(saved_files[0])
    now = shareable(cfg.to_dict())  # as config.yaml holds it
    return sorted(k for k in now if k != "seeds" and saved.get(k) != now[k])


def prepare(trial: optuna.Trial, run_dir: Path, cfg: RunConfig) -> Continuation:
    """Set up ``trial`` (folder ``run_dir``, config ``cfg``) to continue the trial it runs
    again, if any: copy that trial's run folder into ``run_dir`` and report its curve up to
    where its checkpoints are. A first run, or a retry whose original left nothing usable
    or trained another config, starts from scratch (``epoch`` 0)."""
    number = trial.user_attrs.get(RETRY_OF)
    if number is None:
        return Continuation()
    study = trial.study
    dead: FrozenTrial = study._storage.get_trial(
        study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    )
    source = dead.user_attrs.get(RUN_DIR)
    if source is None:
        return Continuation(number, 0, f"trial {number} never wrote a run folder")
    if not Path(source).is_dir():
        return Continuation(
            number,
            0,
            f"trial {number}'s folder {source} is not reachable from {socket.gethostname()}",
        )
    changed = _changed(Path(source), cfg)
    if changed:
        return Continuation(
            number, 0, f"the run config changed since trial {number} ran ({', '.join(changed)})"
        )
    shutil.copytree(source, run_dir)
    dirs = [run_dir / str(seed) for seed in cfg.seeds]
    seeds = None
    if _trained_one_after_another(dead, len(cfg.seeds)):
        epoch, why, seeds = _one_after_another(cfg.seeds, dirs)
    else:
        epoch, why = _epochs_done(cfg.seeds, dirs)
    if epoch == 0:
        shutil.rmtree(run_dir)
        return Continuation(number, 0, f"trial {number}'s {why or 'seeds trained no epoch'}")
    for step, value in sorted(dead.intermediate_values.items()):
        if step < epoch:
            trial.report(value, step)
    return Continuation(number, epoch, seeds=seeds)


def _trained_one_after_another(dead: FrozenTrial, n_seeds: int) -> bool:
    """Whether ``dead``'s seeds trained one after another (its curve, ``CURVE_ATTR``, was
    its first seed's), not fused; the retry trains them the same way (same config)."""
    from lightning_hpo.training.runs import curve_kind

    return n_seeds > 1 and dead.user_attrs.get(CURVE_ATTR) == curve_kind(n_seeds, fused=False)
