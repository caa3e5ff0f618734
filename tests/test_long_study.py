"""A long study never dies and never lies: one bad trial fails alone, workers never repeat
each other's parameters, a rerun is the same study or a clear error, what a study cannot
run is refused up front, and a Python caller's process is left as it was."""

from __future__ import annotations

import gc
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from services import tune_options

from lightning_hpo.attrs import FAIL_REASON
from lightning_hpo.cli import EXIT_BAD_INPUT, tune_main
from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import build, run_config_from_dict
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.errors import ConfigError
from lightning_hpo.tuning.liveness import REQUEUED
from lightning_hpo.tuning.study import TuneOptions, create_or_load_study
from lightning_hpo.tuning.tuner import tune

pytestmark = pytest.mark.usefixtures("quiet")

RUN = {
    "project": "Long",
    "device": "cpu",
    "seeds": [1],
    "epochs": 2,
    "batch_size": 128,
    "data_config": {"n": 300},
    "net_config": {"nodes": 8, "layers": 1},
}
LR_SPACE = {
    "optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-1, "log": True}}
}


def write_configs(tmp_path: Path, run: dict | None = None, **optimize) -> list[str]:
    run_path, opt_path = tmp_path / "run.yaml", tmp_path / "optimize.yaml"
    dump_yaml(RUN | (run or {}), run_path)
    base = {"study_name": "long", "trials": 2, "seed": 1, "pruner": None, "search_space": LR_SPACE}
    dump_yaml(base | optimize, opt_path)
    return tune_options(run_path, opt_path, f"sqlite:///{tmp_path}/s.db", tmp_path / "runs")


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="long", storage=f"sqlite:///{tmp_path}/s.db")


def nothing_new_written(tmp_path: Path, before: set[Path]) -> bool:
    return set(tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------- 1. a trial's failure


def test_a_point_of_the_space_a_component_rejects_fails_that_trial_and_the_study_goes_on(
    tmp_path: Path, user_components, capsys
) -> None:
    # The corners (3 and 5 layers) build, so the preflight passes; the grid also samples 4.
    args = write_configs(
        tmp_path,
        {"net": "user_components.PickyMLP"},
        trials=3,
        sampler={"name": "optuna.samplers.GridSampler"},
        search_space={"net_config": {"layers": {"type": "int", "min": 3, "max": 5}}},
    )
    assert tune_main(args) == 0
    trials = {t.params["net_config_layers"]: t for t in load(tmp_path).trials}
    assert sorted(trials) == [3, 4, 5]
    assert trials[4].state == TrialState.FAIL
    assert "net_config" in trials[4].user_attrs[FAIL_REASON]
    assert "4 layers is not supported" in trials[4].user_attrs[FAIL_REASON]
    assert trials[3].state == trials[5].state == TrialState.COMPLETE
    out = capsys.readouterr().out
    assert "FAILED: " in out and "4 layers is not supported" in out


def test_a_metric_the_trials_do_not_log_fails_each_trial_not_the_study(
    tmp_path: Path, user_components, capsys
) -> None:
    # The preflight's one batch logs val_once, so the metric is accepted; the trials do not.
    user_components.OnceMetricModule.validated = False
    args = write_configs(
        tmp_path, {"module": "user_components.OnceMetricModule"}, metric="val_once"
    )
    assert tune_main(args) == 1  # every trial failed: no best trial, as before
    trials = load(tmp_path).trials
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    assert all("'val_once' is never logged" in t.user_attrs[FAIL_REASON] for t in trials)
    assert "no trial completed: 2 failed" in capsys.readouterr().err


# --------------------------------------------------------------------------- 2. no repeats


def make_run(**overrides):
    return build(run_config_from_dict(RUN | overrides, "<test run>"), "<test run>")


def make_opt(run, **overrides):
    data = {
        "study_name": "long",
        "trials": 6,
        "seed": None,
        "pruner": None,
        "search_space": LR_SPACE,
    }
    return optimize_config_from_dict(data | overrides, run, "<test optimize>")


@pytest.mark.parametrize(
    "given",
    [
        {"seed": 0},
        {"seed": None, "sampler": {"name": "optuna.samplers.TPESampler", "kwargs": {"seed": 0}}},
    ],
    ids=["seed", "sampler.kwargs.seed"],
)
def test_two_workers_asking_at_once_get_different_parameters_however_the_seed_is_given(
    tmp_path: Path, given: dict
) -> None:
    run = make_run()
    opt = make_opt(run, **given)
    options = TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"))
    # Two workers on one study with the same history: each asks for a trial before either tells.
    first, second = (create_or_load_study(run, opt, options) for _ in range(2))
    a, b = first.ask(), second.ask()
    lr_a = opt.suggest(a, run).optimizer_config["lr"]
    lr_b = opt.suggest(b, run).optimizer_config["lr"]
    assert lr_a != lr_b
    # One worker alone stays reproducible: the same seed, the same first suggestion.
    again = optuna.create_study(
        storage=f"sqlite:///{tmp_path}/other.db", sampler=opt.make_sampler(0)
    )
    assert opt.suggest(again.ask(), run).optimizer_config["lr"] == lr_a


def test_each_finished_trial_gets_its_own_place_in_the_progress_count() -> None:
    from lightning_hpo.tuning.study import finished_position

    study = optuna.create_study()
    running = study.ask()
    for value in (1.0, 2.0):
        study.tell(study.ask(), value)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    # A trial still running does not take a place, so two trials finishing while a third
    # runs are [1/N] and [2/N], not both [3/N].
    assert [finished_position(trials, t) for t in finished] == [1, 2]
    study.tell(running, 0.5)
    trials = study.get_trials(deepcopy=False)
    assert finished_position(trials, trials[0]) == 3


# --------------------------------------------------------------------------- 4. the same study


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"metric": "train_loss"}, "metric"),
        ({"direction": "maximize"}, "direction"),
        (
            {
                "search_space": {
                    "optimizer_config": {"lr": {"type": "float", "min": 0.2, "max": 0.5}}
                }
            },
            "search_space.optimizer_config.lr",
        ),
    ],
    ids=["metric", "direction", "search_space"],
)
def test_a_rerun_with_another_metric_direction_or_space_is_refused(
    tmp_path: Path, capsys, change: dict, key: str
) -> None:
    assert tune_main(write_configs(tmp_path, trials=1)) == 0
    capsys.readouterr()
    before = set(tmp_path.rglob("*")) - {tmp_path / "optimize.yaml"}
    code = tune_main(write_configs(tmp_path, trials=2, **change))
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert err.count("\n") == 1 and f"study 'long': {key}: " in err
    assert "start a new study" in err
    assert len(load(tmp_path).trials) == 1
    assert set(tmp_path.rglob("*")) - {tmp_path / "optimize.yaml"} == before


# --------------------------------------------------------------------------- 5. epochs


def test_validation_every_k_epochs_is_refused_for_a_study_with_its_reason(
    tmp_path: Path, capsys
) -> None:
    args = write_configs(tmp_path, {"trainer_config": {"check_val_every_n_epoch": 2}})
    assert tune_main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert (
        "trainer_config.check_val_every_n_epoch" in err and "one validation value per epoch" in err
    )
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "runs").exists()


def test_validation_every_k_epochs_cannot_be_searched() -> None:
    run = make_run()
    space = {"trainer_config": {"check_val_every_n_epoch": {"type": "int", "min": 1, "max": 3}}}
    with pytest.raises(ConfigError, match="check_val_every_n_epoch: cannot be searched"):
        make_opt(run, search_space=space)


# --------------------------------------------------------------------------- 9. refusals


def test_ddp_on_a_journal_storage_is_refused_before_the_study(tmp_path: Path, capsys) -> None:
    args = write_configs(tmp_path, {"devices": 2, "strategy": "ddp_spawn"})
    args[args.index("--storage") + 1] = f"journal:{tmp_path}/s.log"
    assert tune_main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert ": devices: 2 processes per trial need an RDB storage" in err
    assert not (tmp_path / "s.log").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "env",
    [
        {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "0"},
        {"SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1"},
    ],
    ids=["torchrun", "srun"],
)
def test_ranks_started_by_an_outside_launcher_are_refused(
    tmp_path: Path, capsys, monkeypatch, env: dict
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tune_main(write_configs(tmp_path)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "each rank would run a study of its own" in err and err.count("\n") == 1
    assert not (tmp_path / "s.db").exists()


# --------------------------------------------------------------------------- 10. side effects


def test_tune_from_python_leaves_no_frozen_heap_and_its_signal_handlers_as_they_were(
    tmp_path: Path,
) -> None:
    run = make_run()
    opt = make_opt(run, trials=1, seed=1)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    tune(
        run,
        opt,
        TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs")),
        echo=lambda line: None,
    )
    assert gc.get_freeze_count() == 0
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


# --------------------------------------------------------------------------- 6. like with like


def test_pfl_ranks_a_first_seed_curve_only_against_first_seed_curves() -> None:
    from lightning_hpo.attrs import CURVE_ATTR
    from lightning_hpo.pruners import PFLPruner

    study = optuna.create_study()
    # Five completed trials whose curves are seed means: low, smooth, finished.
    for k in range(5):
        curve = {e: 0.1 + 0.01 * k + 0.5 * 0.7**e for e in range(10)}
        study.add_trial(
            optuna.trial.create_trial(
                value=curve[9],
                intermediate_values=curve,
                user_attrs={"epochs": 10, CURVE_ATTR: "mean of 3 seeds"},
            )
        )
    pruner = PFLPruner(n_startup_trials=3, n_warmup_epochs=2, top_k=2, warmup_fraction=0.1)

    def running(kind: str) -> optuna.trial.FrozenTrial:
        trial = study.ask()
        trial.set_user_attr("epochs", 10)
        trial.set_user_attr(CURVE_ATTR, kind)
        for e in range(6):
            trial.report(0.9 + 0.1 * 0.9**e, e)  # far behind, flat
        return study._storage.get_trial(trial._trial_id)

    # Against curves of its own kind it is hopeless; against another kind's it is not judged.
    assert pruner.evaluate(study, running("mean of 3 seeds")).prune is True
    decision = pruner.evaluate(study, running("first of 3 seeds"))
    assert decision.prune is False and decision.reason == "startup"


@pytest.mark.parametrize(
    ("fuse", "kind"), [("auto", "mean of 2 seeds"), (False, "first of 2 seeds")]
)
def test_a_trial_records_what_its_curve_is(tmp_path: Path, fuse, kind: str) -> None:
    from lightning_hpo.attrs import CURVE_ATTR

    run = make_run(seeds=[1, 2], fuse_seeds=fuse)
    opt = make_opt(run, trials=1, seed=1)
    study = tune(
        run,
        opt,
        TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs")),
        echo=lambda line: None,
    )
    assert study.trials[0].user_attrs[CURVE_ATTR] == kind


# --------------------------------------------------------------------------- 3. DDP and data


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [[1], [1, 2]], ids=["one seed", "fused seeds"])
def test_ddp_on_a_dataset_that_does_not_split_evenly_finishes(tmp_path: Path, seeds) -> None:
    import subprocess
    import sys

    # 641 points: 513 to train on, in batches of 256, on 2 CPU ranks.
    run = RUN | {
        "seeds": seeds,
        "epochs": 2,
        "batch_size": 256,
        "data_config": {"n": 641},
        "strategy": "ddp_spawn",
        "devices": 2,
    }
    dump_yaml(run, tmp_path / "run.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_hpo", "train", "--config", "run.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("after 2 epochs") == len(seeds)


# --------------------------------------------------------------------------- 8. dead is dead


def test_a_recycled_pid_is_not_taken_for_the_worker_that_died() -> None:
    import os
    import socket

    from lightning_hpo.attrs import HOST, PID, STARTED
    from lightning_hpo.storage.signed import process_start
    from lightning_hpo.tuning.liveness import fail_dead_workers

    study = optuna.create_study()
    live = os.getppid()  # a process that runs: the one that started this test
    recycled, same = study.ask(), study.ask()
    for trial, started in ((recycled, "1"), (same, process_start(live))):
        for key, value in ((HOST, socket.gethostname()), (PID, live), (STARTED, started)):
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
    assert fail_dead_workers(study) == [recycled.number]
    failed = study._storage.get_trial(recycled._trial_id)
    assert failed.state == TrialState.FAIL and "died" in failed.user_attrs[FAIL_REASON]
    assert study._storage.get_trial(same._trial_id).state == TrialState.RUNNING


def test_an_interrupted_trial_of_a_killed_worker_keeps_its_reason_and_one_retry() -> None:
    from lightning_hpo.attrs import INTERRUPTED, RETRY_OF
    from lightning_hpo.tuning.liveness import fail_dead_workers, mark_interrupted

    study = optuna.create_study()
    trial = study.ask()
    mark_interrupted(study, trial._trial_id)  # and killed before Optuna's tell failed it
    # The launcher sees its job end: the trial fails with the worker's own reason, and the
    # parameters the worker queued are not queued again.
    assert fail_dead_workers(study, dead=lambda t: "its SLURM job 7_0 ended") == [trial.number]
    failed, queued = study.trials
    assert failed.state == TrialState.FAIL and failed.system_attrs[INTERRUPTED]
    assert failed.user_attrs[FAIL_REASON].startswith("interrupted by SIGINT")
    assert queued.state == TrialState.WAITING and queued.user_attrs[RETRY_OF] == trial.number


def test_a_journal_trial_whose_worker_went_silent_on_another_host_is_failed_and_retried(
    tmp_path: Path,
) -> None:
    import time

    from lightning_hpo.attrs import BEAT, HOST, PID
    from lightning_hpo.storage.connect import open_storage
    from lightning_hpo.tuning.liveness import fail_dead_trials
    from lightning_hpo.tuning.study import counted

    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path}/s.log"))
    silent, beating, unsaid = study.ask(), study.ask(), study.ask()
    now = time.time()
    for trial, beat in ((silent, now - 1000), (beating, now - 5)):
        for key, value in ((HOST, "another-host"), (PID, 4242), (BEAT, beat)):
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
    lines: list[str] = []
    fail_dead_trials(study, lines.append, heartbeat=30)
    states = {t.number: t for t in study.get_trials()}
    assert states[silent.number].state == TrialState.FAIL
    assert "pid 4242 on another-host" in states[silent.number].user_attrs[FAIL_REASON]
    assert states[beating.number].state == TrialState.RUNNING
    # Signed by the storage with this process, which lives: not dead.
    assert states[unsaid.number].state == TrialState.RUNNING
    assert len(lines) == 1
    retry = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == states[silent.number].params
    assert counted(study.get_trials()) == 2  # the retry fills the dead trial's slot


def test_an_unsigned_trial_is_failed_after_the_grace() -> None:
    import time

    from lightning_hpo.tuning.liveness import fail_dead_workers

    study = optuna.create_study()  # in memory: nothing signs its trials
    unsaid = study.ask()
    assert fail_dead_workers(study, grace=90) == []
    assert fail_dead_workers(study, grace=90, now=time.time() + 91) == [unsaid.number]
    assert (
        "no worker signed it" in study._storage.get_trial(unsaid._trial_id).user_attrs[FAIL_REASON]
    )


KILLED_AT_ASK = """
import os, signal, sys
import optuna
from lightning_hpo.storage.connect import open_storage
study = optuna.load_study(study_name="s", storage=open_storage(sys.argv[1]))
study.ask()  # a new trial, or the queued one
os.kill(os.getpid(), signal.SIGKILL)  # before any objective could sign it
"""


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_worker_killed_as_it_asks_for_a_trial_leaves_it_to_the_others(
    tmp_path: Path, kind: str
) -> None:
    import subprocess
    import sys

    from lightning_hpo.attrs import RETRY_OF
    from lightning_hpo.storage.connect import open_storage
    from lightning_hpo.tuning.liveness import fail_dead_trials

    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:{tmp_path}/s.log"
    study = optuna.create_study(study_name="s", storage=open_storage(url))

    def killed_at_ask() -> FrozenTrial:
        run = subprocess.run([sys.executable, "-c", KILLED_AT_ASK, url], capture_output=True)
        assert run.returncode == -signal.SIGKILL, run.stderr
        (left,) = study.get_trials(states=(TrialState.RUNNING,))
        return left

    new = killed_at_ask()
    lines: list[str] = []
    fail_dead_trials(study, lines.append, heartbeat=None)  # no grace: only the signature tells
    assert study.trials[new.number].state == TrialState.FAIL
    assert lines == [f"trial {new.number} was left RUNNING by a worker that died: {REQUEUED}"]
    # Its retry, queued, is claimed by the next worker, which is killed as it claims it.
    retry = killed_at_ask()
    assert retry.user_attrs[RETRY_OF] == new.number
    fail_dead_trials(study, lines.append, heartbeat=None)
    assert study.trials[retry.number].state == TrialState.FAIL


def test_an_interrupt_as_a_trial_is_asked_for_leaves_it_interrupted_not_running(
    tmp_path: Path, monkeypatch
) -> None:
    from lightning_hpo.attrs import INTERRUPTED
    from lightning_hpo.tuning.study import counted

    args = write_configs(tmp_path, trials=2)
    asked = optuna.Study.ask

    def ask_then_ctrl_c(study: optuna.Study, *a, **k) -> optuna.Trial:
        trial = asked(study, *a, **k)
        if trial.number == 1:  # created, its objective not yet begun
            raise KeyboardInterrupt
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_ctrl_c)
    assert tune_main(args) == 128 + signal.SIGINT
    first, second, queued = load(tmp_path).trials
    assert first.state == TrialState.COMPLETE
    assert second.state == TrialState.FAIL and second.system_attrs[INTERRUPTED]
    assert "interrupted by SIGINT" in second.user_attrs[FAIL_REASON]
    assert queued.state == TrialState.WAITING
    monkeypatch.setattr(optuna.Study, "ask", asked)
    assert tune_main(args) == 0  # the next run runs the queued trial: the study is whole
    trials = load(tmp_path).trials
    assert counted(trials) == 2 and trials[2].state == TrialState.COMPLETE


def sigterm_before(monkeypatch, owner: object, name: str, when=lambda caller: True) -> None:
    """Make ``owner.name`` send this process SIGTERM, then do its work: the handler runs at
    that very point. ``when``: only for calls from the function of that name."""
    import os
    import sys

    real = getattr(owner, name)

    def under_sigterm(*a, **k):
        if when(sys._getframe(1).f_code.co_name):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(owner, name, under_sigterm)


def stopped_after_one_complete_trial(tmp_path: Path, args: list[str], capsys) -> str:
    """Run the study, stopped by the SIGTERM: its first trial is recorded COMPLETE and its
    line printed. Returns what the command printed."""
    assert tune_main(args) == 128 + signal.SIGTERM
    (trial,) = load(tmp_path).trials
    assert trial.state == TrialState.COMPLETE
    captured = capsys.readouterr()
    assert "[1/3] trial 0" in captured.out
    return captured.out + captured.err


def test_a_signal_while_optuna_records_a_trial_s_outcome_stops_after_it(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from optuna.study import _optimize

    args = write_configs(tmp_path, trials=3)
    sigterm_before(monkeypatch, _optimize, "_tell_with_warning")  # in the middle of tell
    # Told whole, then the study stopped, with no traceback.
    assert "Traceback" not in stopped_after_one_complete_trial(tmp_path, args, capsys)


def test_a_signal_as_the_objective_ends_stops_after_the_trial_is_recorded(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from lightning_hpo.tuning import objective

    args = write_configs(tmp_path, trials=3)
    # The trial trained: its last storage read. Its value is kept, not a FAIL that counts.
    sigterm_before(
        monkeypatch, objective, "check_still_ours", when=lambda caller: caller == "objective"
    )
    stopped_after_one_complete_trial(tmp_path, args, capsys)


def test_a_killed_process_its_parent_has_not_waited_for_is_dead() -> None:
    import subprocess

    from lightning_hpo.tuning.liveness import process_alive

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while process_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # a zombie from the moment the kernel has ended it
        assert not process_alive(child.pid)
        assert child.poll() == -signal.SIGKILL  # and only now waited for
    finally:
        child.kill()
        child.wait()


def test_a_running_trial_beats() -> None:
    import time

    from lightning_hpo.attrs import BEAT
    from lightning_hpo.tuning.liveness import Heartbeat

    study = optuna.create_study()
    trial = study.ask()
    with Heartbeat(trial, interval=0.05):
        first = later = study._storage.get_trial(trial._trial_id).system_attrs[BEAT]
        deadline = time.monotonic() + 10  # a loaded machine may run the thread late
        while later == first and time.monotonic() < deadline:
            time.sleep(0.05)
            later = study._storage.get_trial(trial._trial_id).system_attrs[BEAT]
    assert later > first


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_the_ranks_a_spawn_strategy_started_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    # Rank 0 ends up waiting in a collective (C++), where a signal's Python handler never runs.
    run = RUN | {
        "epochs": 3,
        "module": "user_components.StuckRankModule",
        "strategy": "ddp_spawn",
        "devices": 2,
    }
    dump_yaml(run, tmp_path / "run.yaml")
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_hpo", "train", "--config", "run.yaml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(tmp_path.rglob("events.out.tfevents.*")):
            time.sleep(0.2)
        time.sleep(3.0)
        ranks = [
            pid
            for pid in _children(proc.pid)
            if "spawn" in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        assert len(ranks) == 2, ranks
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in ranks):
            time.sleep(0.2)
        alive = [p for p in ranks if Path(f"/proc/{p}").exists()]
        assert alive == []
    finally:
        proc.kill()
        for pid in ranks:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- objective


def test_objective_best_returns_each_trial_s_best_epoch_and_says_so(tmp_path: Path, capsys) -> None:
    import json

    args = write_configs(tmp_path, {"epochs": 4}, objective="best", trials=2)
    assert tune_main(args) == 0
    out = capsys.readouterr().out
    assert "val_loss (best epoch) " in out and "(val_loss (best epoch), minimize)" in out
    study = load(tmp_path)
    assert study.metric_names == ["val_loss (best epoch)"]
    for trial in study.trials:
        (result,) = Path(trial.user_attrs["run_dir"]).rglob("result.json")
        history = json.loads(result.read_text())["history"]
        assert trial.value == pytest.approx(min(history))
        assert trial.value <= history[-1]


def test_objective_is_last_or_best() -> None:
    with pytest.raises(ConfigError, match="objective: expected last or best, got 'mean'"):
        make_opt(make_run(), objective="mean")


def test_a_rerun_with_the_other_objective_is_refused(tmp_path: Path, capsys) -> None:
    assert tune_main(write_configs(tmp_path, trials=1)) == 0
    capsys.readouterr()
    assert tune_main(write_configs(tmp_path, trials=2, objective="best")) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "study 'long': objective: " in err and "keep objective: last" in err
