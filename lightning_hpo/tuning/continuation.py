"""A retried trial continues; it does not start over.

A trial whose worker died (a heartbeat, the dead-worker check) or was interrupted (Ctrl-C,
SIGTERM: a SLURM time limit or preemption, a spot instance's notice) has its parameters
queued once more (``storage.stale.queue_retry``). When the retry runs and the dead trial's
run folder is reachable (the same machine, or a shared file system), the retry copies it
into its own folder and every seed resumes from its ``last.ckpt``; the intermediate values
the dead trial reported for those epochs are reported again, so the pruner sees the same
curve; training continues at the next epoch. Where the folder is not reachable, the retry
starts over and says why. Either way the trial records what happened (user attr
``retry``), and its progress line shows it.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from lightning_hpo.attrs import RETRY_OF, RUN_DIR
from lightning_hpo.config.run import RunConfig
from lightning_hpo.training.files import CONFIG_FILE, LAST, checkpoint_file


@dataclass(frozen=True)
class Continuation:
    """Where a trial starts: ``epoch`` epochs already trained (0: from scratch), and why."""

    of: int | None = None  # the trial this one runs again
    epoch: int = 0
    why: str | None = None  # when a retry starts over

    def record(self) -> dict[str, object] | None:
        """What the trial stores (user attr ``retry``), None for a first run."""
        if self.of is None:
            return None
        if self.epoch:
            return {"of": self.of, "continued_at_epoch": self.epoch}
        return {"of": self.of, "started_over": self.why}


def _epochs_done(run_dirs: list[Path]) -> int:
    """The epoch the retry's reported curve continues at: the furthest seed's ``last.ckpt``
    (0 when a seed has none). A kill between fused seeds' writes leaves some seeds an epoch
    behind; the furthest group resumes first and reports (``training.runs._resume_fused``),
    and the dead trial had reported that epoch before any seed's checkpoint was written."""
    import torch

    done = []
    for run_dir in run_dirs:
        path = checkpoint_file(run_dir, LAST)
        if not path.is_file():
            return 0
        try:
            done.append(int(torch.load(path, map_location="cpu", weights_only=False)["epoch"]) + 1)
        except Exception:  # noqa: BLE001 - a truncated file: that seed starts over
            return 0
    return max(done, default=0)


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
    epoch = _epochs_done([run_dir / str(seed) for seed in cfg.seeds])
    if epoch == 0:
        shutil.rmtree(run_dir)
        return Continuation(number, 0, f"trial {number}'s folder holds no usable last.ckpt")
    for step, value in sorted(dead.intermediate_values.items()):
        if step < epoch:
            trial.report(value, step)
    return Continuation(number, epoch)
