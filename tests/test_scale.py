"""Scale-out: local workers, separate processes on a server storage, the Redis journal, the
PFL pruner across processes, and one trial trained with DDP on two CPU processes.

Trials are tiny (one seed, two epochs, 300 points); the point is who runs what and what
the study holds afterwards, not the training.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from services import (  # noqa: F401 - fixtures
    open_study,
    optimize_yaml,
    postgres_url,
    redis_url,
    run,
    start,
    stop,
    subprocess_env,
    tune_args,
    wait_for,
)

from lightning_hpo.attrs import FAIL_REASON, INTERRUPTED, PID, SURPLUS
from lightning_hpo.pruners.pfl import PFLPruner
from lightning_hpo.tuning.study import counted

optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY = "scale"
TRIAL_LINE = re.compile(
    r"^\[(\d+)/(\d+)\] trial (\d+) (val_loss \S+|pruned at step \d+ .*?|FAILED: .*?) \| .* \| done \d+, pruned \d+, failed \d+ \| best .*$"
)

USER_MODULE = '''
import os

import optuna
import torch

from lightning_hpo.builtin.data import synthetic_regression


def record_threads(log, n=300):
    """The built-in data, after noting which process trains it with how many torch threads."""
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} {torch.get_num_threads()}\\n")
    return synthetic_regression(n=n)


class RecordingMSELoss(torch.nn.MSELoss):
    """MSE that notes the targets of every training batch it is given, one file per process:
    line 1 ``<rank> <time>``, then one line of targets per call. (Validation runs without
    gradients and is not noted.) A fused run calls it once per seed and step, seed by seed."""

    def __init__(self, folder):
        super().__init__()
        self.folder, self.file = folder, None

    def __getstate__(self):
        return self.__dict__ | {"file": None}  # a spawned rank opens its own

    def forward(self, pred, target):
        if torch.is_grad_enabled():
            import time

            import torch.distributed as dist

            if self.file is None:
                rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else -1
                self.file = open(os.path.join(self.folder, f"{os.getpid()}.txt"), "a")
                self.file.write(f"{rank} {time.time()!r}\\n")
            self.file.write(" ".join(repr(v) for v in target.flatten().tolist()) + "\\n")
            self.file.flush()
        return super().forward(pred, target)


class PruneFirstTrialAtStep1(optuna.pruners.BasePruner):
    """Prunes trial 0 once it has reported step 1; never anything else."""

    def prune(self, study, trial):
        return trial.number == 0 and trial.last_step is not None and trial.last_step >= 1
'''


@pytest.fixture
def user_dir(tmp_path) -> Path:
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "scale_user.py").write_text(USER_MODULE)
    return folder


def write_configs(
    tmp_path: Path, write_config, trials: int, pruner: str | None = None, **run_overrides
) -> tuple[Path, Path]:
    run_cfg = write_config(
        "run.yaml", **({"project": "Scale", "data_config": {"n": 300}} | run_overrides)
    )
    opt = tmp_path / "optimize.yaml"
    opt.write_text(optimize_yaml(STUDY, trials, pruner))
    return run_cfg, opt


def assert_exact_total(url: str, total: int) -> list:
    """The study's ``total`` trials, each COMPLETE; returns them. Two workers that asked for
    the last slot at the same moment leave one more, which ran nothing and does not count
    (README: the total is shared)."""
    trials = open_study(url, STUDY).get_trials()
    ran = [t for t in trials if not t.system_attrs.get(SURPLUS)]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * total
    assert counted(trials) == total
    for t in (t for t in trials if t.system_attrs.get(SURPLUS)):
        assert t.state == TrialState.FAIL and not t.intermediate_values, t
        assert t.user_attrs[FAIL_REASON] == f"not run: the study already holds its {total} trials"
    return ran


def trial_lines(stdout: str) -> list[re.Match]:
    return [m for m in map(TRIAL_LINE.match, stdout.splitlines()) if m]


# --------------------------------------------------------------------------- tune.py --workers


@pytest.mark.slow
def test_two_local_workers_reach_the_exact_total_in_one_stream_with_split_threads(
    tmp_path, write_config, user_dir
) -> None:
    log = tmp_path / "threads.log"
    # Trials of a second or so: a worker that starts a moment after the other still gets some.
    run_cfg, opt = write_configs(
        tmp_path,
        write_config,
        6,
        data="scale_user.record_threads",
        data_config={"n": 300, "log": str(log)},
        epochs=10,
    )
    url = f"sqlite:///{tmp_path}/study.db"
    proc = run(
        tune_args(run_cfg, opt, url, tmp_path / "runs", "--workers", "2"),
        tmp_path,
        timeout=300,
        env=subprocess_env(user_dir),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = assert_exact_total(url, 6)

    # One merged stream: one whole line per trial, from both workers, then one summary.
    lines = trial_lines(proc.stdout)
    assert sorted(int(m[3]) for m in lines) == [t.number for t in trials]
    assert {m[2] for m in lines} == {"6"}
    assert proc.stdout.count("Best trial:") == 1

    # Both workers trained, each with its share of the CPUs this process may use. Before
    # them, the parent built the data for its preflight (the run config and the search
    # space's corners), and no trial.
    records = [line.split() for line in log.read_text().splitlines()]
    parent = records[0][0]
    preflight = [r for r in records if r[0] == parent]
    assert records[: len(preflight)] == preflight
    records = records[len(preflight) :]
    assert len(records) == 6
    pids = {pid for pid, _ in records}
    assert len(pids) == 2 and parent not in pids
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert {int(threads) for _, threads in records} == {max(1, cpus // 2)}


def wait_for_running(url: str, count: int, proc: subprocess.Popen, log: Path) -> list:
    """The study's RUNNING trials once ``count`` of them have reported an epoch."""
    wait_for(
        lambda: any((log.parent / "runs").rglob("config.yaml")),
        120,
        "a worker's first run folder",
        proc,
        log,
    )
    study = open_study(url, STUDY)

    def running():
        trials = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.intermediate_values
        ]
        return trials if len(trials) >= count else None

    return wait_for(running, 120, f"{count} RUNNING trials with an epoch", proc, log)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig",
    [signal.SIGINT, signal.SIGTERM],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_to_the_workers_parent_stops_every_worker_cleanly(
    sig, tmp_path, write_config, postgres_url
) -> None:
    # On PostgreSQL: on SQLite, two workers interrupted at once sometimes lock each other out
    # (about 1 run in 15 on 2 cores: a worker waits the 60 s busy timeout per write, then ends
    # with "database is locked" and its trial RUNNING), which is not what this test is about.
    run_cfg, opt = write_configs(tmp_path, write_config, 4, data_config={"n": 2000})
    url = postgres_url
    log = tmp_path / "workers.log"
    parent = start(
        tune_args(run_cfg, opt, url, tmp_path / "runs", "--workers", "2", "--epochs", "2000"),
        tmp_path,
        log,
    )
    children: list[int] = []
    try:
        running = wait_for_running(url, 2, parent, log)
        children = [t.system_attrs[PID] for t in running]
        parent.send_signal(sig)
        assert parent.wait(timeout=60) == 128 + sig
        deadline = time.monotonic() + 20
        while any(map(_alive, children)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)], (
            "workers still running after their parent ended"
        )
    finally:
        stop(parent)
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    trials = open_study(url, STUDY).get_trials()
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert all(
        t.system_attrs.get(INTERRUPTED) for t in trials if t.number in {r.number for r in running}
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of the (ended) parent is reaped by init soon; treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return True


# --------------------------------------------------------------------------- separate machines


@pytest.mark.slow
def test_two_separate_tune_processes_on_postgresql_reach_the_exact_total(
    tmp_path, write_config, postgres_url
) -> None:
    # As the README has it: the same command on every machine, on a new database;
    # the first creates the study, the other joins it.
    run_cfg, opt = write_configs(tmp_path, write_config, 6)
    procs = []
    try:
        for machine in range(2):
            procs.append(
                subprocess.Popen(
                    tune_args(run_cfg, opt, postgres_url, tmp_path / f"runs{machine}"),
                    cwd=tmp_path,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
            time.sleep(1)
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert_exact_total(postgres_url, 6)
    assert len(trial_lines(outputs[0])) + len(trial_lines(outputs[1])) == 6


def test_a_worker_that_loses_the_last_slot_to_another_machine_does_not_exceed_the_total(
    tmp_path, small_config, monkeypatch, quiet
) -> None:
    from lightning_hpo.config.optimize import optimize_config_from_dict
    from lightning_hpo.tuning import tuner as tuning
    from lightning_hpo.tuning.study import TuneOptions, create_or_load_study

    run_cfg = small_config(project="Scale", data_config={"n": 300})
    opt = optimize_config_from_dict(
        {
            "study_name": STUDY,
            "trials": 2,
            "seed": 1,
            "pruner": None,
            "search_space": {
                "optimizer_config": {
                    "lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-2, "log": True}
                }
            },
        },
        run_cfg,
        "<test>",
    )
    settings = TuneOptions(
        storage=f"sqlite:///{tmp_path}/study.db", output=str(tmp_path / "runs"), heartbeat=None
    )
    study = create_or_load_study(run_cfg, opt, settings)
    study.add_trial(
        create_trial(
            value=1.0, params={"optimizer_config_lr": 1.0e-3}, distributions=opt.distributions()
        )
    )

    real_remaining = tuning.remaining

    def remaining_then_another_machine_starts_a_trial(study, total):
        left = real_remaining(study, total)
        study.ask()  # the other machine's trial: RUNNING, on no host of ours
        return left

    monkeypatch.setattr(tuning, "remaining", remaining_then_another_machine_starts_a_trial)
    trials = tuning.tune(run_cfg, opt, settings, echo=lambda line: None).get_trials()
    assert counted(trials) == 2, [t.state for t in trials]


def test_two_machines_joining_at_the_same_moment_get_different_suggestions(
    tmp_path, small_config
) -> None:
    from lightning_hpo.config.optimize import optimize_config_from_dict
    from lightning_hpo.tuning.study import TuneOptions, create_or_load_study

    run_cfg = small_config()
    opt = optimize_config_from_dict(
        {
            "study_name": STUDY,
            "trials": 4,
            "seed": 1,
            "search_space": {
                "optimizer_config": {
                    "lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-2, "log": True}
                }
            },
        },
        run_cfg,
        "<test>",
    )
    settings = TuneOptions(storage=f"sqlite:///{tmp_path}/study.db", heartbeat=None)
    # Each machine opens the study as tune.py does, before either has asked for a trial.
    machines = [create_or_load_study(run_cfg, opt, settings) for _ in range(2)]
    suggested = [opt.suggest(study.ask(), run_cfg).optimizer_config["lr"] for study in machines]
    assert suggested[0] != suggested[1]


def test_pfl_in_one_process_decides_with_trials_another_process_completed(postgres_url) -> None:
    epochs = 20
    script = textwrap.dedent(
        f"""
        import math, optuna
        from optuna.distributions import FloatDistribution
        from lightning_hpo.storage.connect import open_storage
        study = optuna.create_study(study_name={STUDY!r}, storage=open_storage({postgres_url!r}, heartbeat=None))
        for c in (0.10, 0.11, 0.12):
            curve = {{e: 1.0 * math.exp(-0.3 * e) + c for e in range({epochs})}}
            study.add_trial(optuna.trial.create_trial(
                value=curve[{epochs} - 1], params={{"x": c}}, distributions={{"x": FloatDistribution(0, 1)}},
                intermediate_values=curve, user_attrs={{"epochs": {epochs}, "n_seeds": 1}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr

    def running_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
        """A trial that has flattened out at 0.8 after 12 of its 20 epochs."""
        trial = study.ask({"x": FloatDistribution(0, 1)})
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("n_seeds", 1)
        for e in range(12):
            trial.report(0.8 + 0.2 * 0.5**e, e)
        return study._storage.get_trial(trial._trial_id)

    pruner = dict(n_startup_trials=3, n_warmup_epochs=5, top_k=3)
    shared = open_study(postgres_url, STUDY)
    assert len(shared.get_trials(states=(TrialState.COMPLETE,))) == 3  # the other process's trials
    assert PFLPruner(**pruner).prune(shared, running_trial(shared)) is True

    alone = optuna.create_study(study_name="alone", storage=shared._storage)
    assert PFLPruner(**pruner).prune(alone, running_trial(alone)) is False


# --------------------------------------------------------------------------- Redis journal


def test_redis_journal_study_reaches_its_total(tmp_path, write_config, redis_url) -> None:
    run_cfg, opt = write_configs(tmp_path, write_config, 3)
    proc = run(tune_args(run_cfg, opt, redis_url, tmp_path / "runs"), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(trial_lines(proc.stdout)) == 3
    assert_exact_total(redis_url, 3)
    # Run again: the study is complete, nothing more is trained.
    again = run(tune_args(run_cfg, opt, redis_url, tmp_path / "runs"), tmp_path)
    assert again.returncode == 0 and trial_lines(again.stdout) == []
    assert_exact_total(redis_url, 3)


# --------------------------------------------------------------------------- DDP


@dataclass
class DdpStudy:
    trials: list
    stdout: str
    seen: Path  # RecordingMSELoss's files: what each process trained on


DDP_SEEDS, DDP_N, DDP_BATCH = [1, 2], 300, 64


@pytest.fixture(scope="module")
def ddp_study(tmp_path_factory, small_config_dict) -> DdpStudy:
    """Two trials of two fused seeds, each trained by 2 CPU processes (ddp_spawn, gloo); a
    stand-in pruner prunes trial 0 at step 1. The loss notes the training targets each
    process sees."""
    from lightning_hpo.config.yamlio import dump_yaml

    folder = tmp_path_factory.mktemp("ddp")
    user = folder / "user"
    user.mkdir()
    (user / "scale_user.py").write_text(USER_MODULE)
    seen = folder / "seen"
    seen.mkdir()
    run_cfg, opt = folder / "run.yaml", folder / "optimize.yaml"
    dump_yaml(
        small_config_dict(
            project="Ddp", seeds=DDP_SEEDS, epochs=3, batch_size=DDP_BATCH, data_config={"n": DDP_N}, strategy="ddp_spawn", devices=2,
            criterion="scale_user.RecordingMSELoss", criterion_config={"folder": str(seen)},
        ),
        run_cfg,
    )  # fmt: skip
    opt.write_text(optimize_yaml(STUDY, 2, "{name: scale_user.PruneFirstTrialAtStep1}"))
    url = f"sqlite:///{folder}/study.db"
    proc = run(
        tune_args(run_cfg, opt, url, folder / "runs"), folder, timeout=300, env=subprocess_env(user)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return DdpStudy(open_study(url, STUDY).get_trials(), proc.stdout, seen)


def _seen_by_process(seen: Path) -> list[tuple[int, float, list[list[float]]]]:
    """(rank, start time, targets of each call) per process that trained, in start order."""
    processes = []
    for path in seen.glob("*.txt"):
        head, *calls = path.read_text().splitlines()
        rank, started = head.split()
        processes.append(
            (int(rank), float(started), [[float(v) for v in line.split()] for line in calls])
        )
    return sorted(processes, key=lambda p: p[1])


@pytest.mark.slow
def test_ddp_ranks_each_train_their_own_half_of_every_seeds_epoch(ddp_study) -> None:
    from lightning_hpo.builtin.data import synthetic_regression

    train_targets = synthetic_regression(n=DDP_N)[0].tensors[1].flatten().tolist()
    assert len(set(train_targets)) == len(train_targets) == 240  # a target names its sample
    share = len(train_targets) // 2  # each rank's samples per seed and epoch
    processes = _seen_by_process(ddp_study.seen)
    # The tune.py process itself trained only its preflight's batch, on one device (no rank),
    # before the study. Only spawned ranks trained the trials: ranks 0 and 1 for each trial,
    # trial after trial.
    main = [p for p in processes if p[0] == -1]
    processes = [p for p in processes if p[0] >= 0]
    assert len(main) == 1 and main[0][1] < processes[0][1]
    pairs = processes[:2], processes[2:]
    assert len(processes) == 4 and [sorted(rank for rank, _, _ in pair) for pair in pairs] == [
        [0, 1],
        [0, 1],
    ]
    for trial, pair in zip(ddp_study.trials, pairs):
        epochs = len(trial.intermediate_values)  # 2 for the pruned trial, 3 for the other
        per_rank = {}
        for rank, _, calls in pair:
            # Fused: one call per seed and step, seed after seed.
            per_seed = [
                [v for call in calls[index :: len(DDP_SEEDS)] for v in call]
                for index in range(len(DDP_SEEDS))
            ]
            assert [len(values) for values in per_seed] == [epochs * share] * len(DDP_SEEDS), (
                trial.number,
                rank,
            )
            per_rank[rank] = [
                [values[e * share : (e + 1) * share] for e in range(epochs)] for values in per_seed
            ]
        for index in range(len(DDP_SEEDS)):
            orders = []
            for epoch in range(epochs):
                first, second = (per_rank[r][index][epoch] for r in (0, 1))
                assert not set(first) & set(second), (trial.number, index, epoch)  # disjoint shares
                assert sorted(first + second) == sorted(train_targets), (
                    trial.number,
                    index,
                    epoch,
                )  # the whole set
                orders.append(first + second)
            assert len({tuple(o) for o in orders}) == epochs  # reshuffled every epoch
        # Each seed draws its own order.
        assert per_rank[0][0][0] != per_rank[0][1][0]


@pytest.mark.slow
def test_ddp_trial_is_pruned_by_the_pruner(ddp_study) -> None:
    pruned = ddp_study.trials[0]
    assert pruned.state == TrialState.PRUNED
    assert sorted(pruned.intermediate_values) == [0, 1]
    assert pruned.value == pruned.intermediate_values[1]
    assert "trial 0 pruned at step 1" in ddp_study.stdout


@pytest.mark.slow
def test_ddp_trial_that_is_not_pruned_completes(ddp_study) -> None:
    done = ddp_study.trials[1]
    assert sorted(done.intermediate_values) == [0, 1, 2]
    assert done.state == TrialState.COMPLETE, done.user_attrs.get("fail_reason")
    assert done.value == pytest.approx(done.intermediate_values[2])
    # Fused inside each rank: each seed has its own curve, and the trial reported their mean.
    histories = [
        json.loads((Path(done.user_attrs["run_dir"]) / str(seed) / "result.json").read_text())[
            "history"
        ]
        for seed in (1, 2)
    ]
    assert [len(h) for h in histories] == [3, 3] and histories[0] != histories[1]
    for epoch in range(3):
        assert done.intermediate_values[epoch] == pytest.approx(
            (histories[0][epoch] + histories[1][epoch]) / 2, rel=1e-6
        )
    for seed in (1, 2):
        assert (Path(done.user_attrs["run_dir"]) / str(seed) / "checkpoints" / "best.ckpt").exists()
