"""A retried trial continues; it does not start over: a worker SIGKILLed mid-trial, or
interrupted the way a SLURM time limit interrupts it, and the next run continues the trial
from its checkpoints, with the curve the pruner saw, at the next epoch; seeds trained one
after another each continue where they stood."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState
from services import tune_args

from lightning_hpo.attrs import FAIL_REASON, RETRY_ATTR, RETRY_OF, RUN_DIR
from lightning_hpo.config.run import run_config_from_dict
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.training import runs
from lightning_hpo.training.results import RESULT_FILE

EPOCHS = 24


def write_configs(folder: Path, seeds: list[int]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    dump_yaml(
        {
            "project": "Cont",
            "device": "cpu",
            "seeds": seeds,
            "epochs": EPOCHS,
            "batch_size": 64,
            "data_config": {"n": 2500},
            "net_config": {"nodes": 16, "layers": 2},
        },
        folder / "run.yaml",
    )
    dump_yaml(
        {
            "study_name": "c",
            "trials": 1,
            "seed": 3,
            "pruner": None,
            "search_space": {
                "optimizer_config": {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-2}}
            },
        },
        folder / "optimize.yaml",
    )
    return tune_args(
        folder / "run.yaml", folder / "optimize.yaml", f"sqlite:///{folder}/s.db", folder / "runs"
    )


def load(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="c", storage=f"sqlite:///{folder}/s.db")


def stop_midway(cmd: list[str], folder: Path, sig: signal.Signals) -> int:
    """Start the study, and send ``sig`` once its trial has reported 10 epochs."""
    proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                trials = load(folder).get_trials()
            except KeyError:  # no study yet
                trials = []
            if trials and len(trials[0].intermediate_values) >= 10:
                break
            time.sleep(0.1)
        proc.send_signal(sig)
        return proc.wait(timeout=60)
    finally:
        proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [[1], [1, 2]], ids=["one seed", "fused seeds"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_retried_trial_continues_from_its_checkpoints(tmp_path: Path, seeds, sig) -> None:
    whole = tmp_path / "whole"
    assert (
        subprocess.run(write_configs(whole, seeds), cwd=whole, capture_output=True).returncode == 0
    )
    (uninterrupted,) = load(whole).get_trials()

    folder = tmp_path / "stopped"
    cmd = write_configs(folder, seeds)
    stop_midway(cmd, folder, sig)
    stopped, *queued = load(folder).get_trials()
    # SIGKILL leaves it RUNNING (the next run finds its worker dead); SIGTERM fails it as
    # interrupted and queues its parameters at once.
    assert stopped.state == (TrialState.RUNNING if sig == signal.SIGKILL else TrialState.FAIL)
    assert [t.state for t in queued] == ([] if sig == signal.SIGKILL else [TrialState.WAITING])
    done = len(stopped.intermediate_values)

    again = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = {t.number: t for t in load(folder).get_trials()}
    retry = next(t for t in trials.values() if t.user_attrs.get(RETRY_OF) == stopped.number)
    assert trials[stopped.number].state == TrialState.FAIL
    assert trials[stopped.number].user_attrs[FAIL_REASON]
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params
    epoch = retry.user_attrs[RETRY_ATTR]["continued_at_epoch"]
    assert done - 2 <= epoch <= done  # from the last checkpoint, at most an epoch behind
    assert f"retry of trial {stopped.number}, continued at epoch {epoch}" in again.stdout
    # The pruner saw the same curve: the stopped trial's values, then the rest.
    for step in range(epoch):
        assert retry.intermediate_values[step] == stopped.intermediate_values[step]
    assert sorted(retry.intermediate_values) == list(range(EPOCHS))
    assert retry.value == pytest.approx(uninterrupted.value, rel=1e-5)
    # Its own folder; the stopped trial's is left as it was.
    assert retry.user_attrs[RUN_DIR] != stopped.user_attrs[RUN_DIR]
    assert Path(stopped.user_attrs[RUN_DIR]).is_dir()


def test_a_retry_whose_original_folder_is_gone_starts_over_and_says_why(tmp_path: Path) -> None:
    from lightning_hpo.storage.stale import queue_retry
    from lightning_hpo.tuning.continuation import prepare

    study = optuna.create_study()
    dead = study.ask()
    dead.set_user_attr(RUN_DIR, str(tmp_path / "elsewhere" / "g[0]"))
    dead.report(1.0, 0)
    study.tell(dead, state=TrialState.FAIL)
    queue_retry(study, study.trials[0])
    retry = study.ask()
    continuation = prepare(retry, tmp_path / "g[1]", run_config_from_dict({"seeds": [1]}))
    assert continuation.epoch == 0
    assert continuation.record() == {
        "of": 0,
        "started_over": f"trial 0's folder {tmp_path / 'elsewhere' / 'g[0]'} is not reachable from "
        + __import__("socket").gethostname(),
    }
    assert not (tmp_path / "g[1]").exists()


def test_a_retry_of_a_trial_that_trained_another_config_starts_over_and_says_why(
    tmp_path: Path,
) -> None:
    from lightning_hpo.storage.stale import queue_retry
    from lightning_hpo.tuning.continuation import prepare

    trained = run_config_from_dict({"seeds": [1], "epochs": 1000})
    folder = tmp_path / "g[0]"
    (folder / "1" / "checkpoints").mkdir(parents=True)
    dump_yaml(trained.to_dict(), folder / "1" / "config.yaml")
    (folder / "1" / "checkpoints" / "last.ckpt").write_bytes(b"not read")
    study = optuna.create_study()
    dead = study.ask()
    dead.set_user_attr(RUN_DIR, str(folder))
    study.tell(dead, state=TrialState.FAIL)
    queue_retry(study, study.trials[0])
    # A rerun with --epochs 2: the checkpoints belong to a 1000-epoch run.
    retry = study.ask()
    continuation = prepare(
        retry, tmp_path / "g[1]", run_config_from_dict({"seeds": [1], "epochs": 2})
    )
    assert continuation.epoch == 0
    assert continuation.record()["started_over"] == (
        "the run config changed since trial 0 ran (epochs)"
    )
    assert not (tmp_path / "g[1]").exists()


# --------------------------------------------------------------------------- seeds one after another


class WorkerDies(BaseException):
    """The worker's process ends here, as under ``kill -9``: nothing of the tuner runs after
    it, and its trial is left RUNNING."""


class DieBeforeEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise WorkerDies


class CountEpochs(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)


ONE_AFTER_ANOTHER = {
    "project": "Cont",
    "device": "cpu",
    "seeds": [1, 2],
    "fuse_seeds": False,
    "epochs": 4,
    "batch_size": 128,
    "data_config": {"n": 300},
    "net_config": {"nodes": 8, "layers": 1},
}
LR = {"optimizer_config": {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-2}}}


def with_each_seed(patch: pytest.MonkeyPatch, callback: Callable[[int], Callback | None]) -> None:
    """Give every seed that ``fit_run`` trains ``callback(seed)`` (None: nothing)."""
    real = runs.fit_seed

    def fit_seed(cfg, seed, run_dir, options=None, dm=None):
        options = options or runs.FitOptions()
        extra = callback(seed)
        if extra is not None:
            options = dataclasses.replace(options, callbacks=[*options.callbacks, extra])
        return real(cfg, seed, run_dir, options, dm)

    patch.setattr(runs, "fit_seed", fit_seed)


@pytest.mark.parametrize(
    ("dies_in", "trains", "continued"),
    [
        (
            1,
            {1: [2, 3], 2: [0, 1, 2, 3]},
            (2, "seed 1 continued at epoch 2, seed 2 from the start"),
        ),
        (2, {2: [2, 3]}, (4, "seed 1 kept (finished), seed 2 continued at epoch 2")),
    ],
    ids=["in its first seed", "in its second seed"],
)
def test_a_retried_trial_whose_seeds_train_one_after_another_continues_each_where_it_stood(
    tmp_path: Path, monkeypatch, quiet, dies_in: int, trains: dict, continued: tuple
) -> None:
    from lightning_hpo.config.optimize import optimize_config_from_dict
    from lightning_hpo.config.run import build
    from lightning_hpo.tuning.liveness import fail_dead_workers
    from lightning_hpo.tuning.study import TuneOptions
    from lightning_hpo.tuning.tuner import tune

    run = build(run_config_from_dict(ONE_AFTER_ANOTHER, "<test run>"), "<test run>")
    opt = optimize_config_from_dict(
        {"study_name": "c", "trials": 1, "seed": 3, "pruner": None, "search_space": LR},
        run,
        "<test optimize>",
    )

    def options(name: str) -> TuneOptions:
        return TuneOptions(storage=f"sqlite:///{tmp_path}/{name}.db", output=str(tmp_path / name))

    (whole,) = tune(run, opt, options("whole"), echo=lambda line: None).get_trials()
    with monkeypatch.context() as patch:
        with_each_seed(patch, lambda seed: DieBeforeEpoch(2) if seed == dies_in else None)
        with pytest.raises(WorkerDies):
            tune(run, opt, options("died"), echo=lambda line: None)
    study = optuna.load_study(study_name="c", storage=options("died").storage)
    assert fail_dead_workers(study, dead=lambda trial: "its worker died") == [0]

    counters: dict[int, CountEpochs] = {}
    lines: list[str] = []
    with monkeypatch.context() as patch:
        with_each_seed(patch, lambda seed: counters.setdefault(seed, CountEpochs()))
        dead, retry = tune(run, opt, options("died"), echo=lines.append).get_trials()
    # Each seed continued where it stood: none trained an epoch it had already trained.
    assert {seed: counter.epochs for seed, counter in counters.items()} == trains
    epoch, seeds = continued
    assert retry.user_attrs[RETRY_ATTR] == {"of": 0, "continued_at_epoch": epoch, "seeds": seeds}
    assert f"(retry of trial 0, {seeds})" in lines[0]
    # As if it had never stopped: the first seed's curve, reported once each epoch, and the value.
    assert retry.state == TrialState.COMPLETE
    assert retry.intermediate_values == pytest.approx(whole.intermediate_values, rel=1e-5)
    assert retry.value == pytest.approx(whole.value, rel=1e-5)
    if dies_in == 2:  # the finished seed's result is the dead trial's, kept
        kept = Path(retry.user_attrs[RUN_DIR]) / "1" / RESULT_FILE
        assert kept.read_text() == (Path(dead.user_attrs[RUN_DIR]) / "1" / RESULT_FILE).read_text()
