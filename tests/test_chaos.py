"""Chaos: a 24-trial study on PostgreSQL with 3 workers, a random worker SIGKILLed every few
seconds (and a new one started), up to 8 times in the first half of the study, and a network that raises
on some points (one of them queued, so it is surely tried). Nothing may be lost, counted twice, left RUNNING or mixed up."""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from services import (  # noqa: F401 - fixtures
    TUNE,
    open_study,
    postgres_url,
    start,
    stop,
    subprocess_env,
    tune_args,
)

from lightning_hpo.attrs import FAIL_REASON, PID, RETRY_OF, RUN_DIR
from lightning_hpo.config.yamlio import dump_yaml, load_yaml
from lightning_hpo.tuning.study import counted

TOTAL, WORKERS = 24, 3
MAX_KILLS = 8  # a storm of kills, then the study must finish: on a loaded machine a trial
# can take longer than the kills' cadence, and an endless storm would only stall it

CHAOS_USER = '''
from lightning_hpo.builtin import MLP


class ChaosNet(MLP):
    """An MLP that refuses one inner width of the search space (12), which no corner shows."""

    def __init__(self, in_features, out_features, nodes=8, layers=1):
        if nodes == 12:
            raise ValueError("12 nodes is not supported")
        super().__init__(in_features, out_features, nodes=nodes, layers=layers)
'''


@pytest.mark.slow
def test_a_study_survives_killed_workers_and_failing_trials(
    tmp_path: Path, postgres_url: str, capsys
) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "chaos_user.py").write_text(CHAOS_USER)
    env = subprocess_env(user)
    run_cfg, opt = tmp_path / "run.yaml", tmp_path / "optimize.yaml"
    dump_yaml(
        {
            "project": "Chaos",
            "device": "cpu",
            "seeds": [1],
            "epochs": 8,
            "batch_size": 64,
            "net": "chaos_user.ChaosNet",
            "net_config": {"nodes": 8, "layers": 1},
            "data_config": {"n": 1500},
        },
        run_cfg,
    )
    dump_yaml(
        {
            "study_name": "chaos",
            "trials": TOTAL,
            "seed": 7,
            "pruner": None,
            "search_space": {
                "net_config": {"nodes": {"type": "int", "min": 4, "max": 32, "step": 4}},
                "optimizer_config": {
                    "lr": {"type": "float", "min": 1.0e-3, "max": 3.0e-2, "log": True}
                },
            },
        },
        opt,
    )
    args = tune_args(run_cfg, opt, postgres_url, tmp_path / "runs", "--heartbeat", "2")
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()

    def worker(k: int):
        return start(args, tmp_path, logs / f"worker{k}.log", env=env)

    # The study is created once, by a first worker, before the others start (optuna #4621).
    workers = [worker(0)]
    while not (tmp_path / "runs").exists() and workers[0].poll() is None:
        time.sleep(0.2)
    # The refused width for sure, whatever the sampler and the kills make of the others.
    open_study(postgres_url, "chaos").enqueue_trial(
        {"net_config_nodes": 12, "optimizer_config_lr": 1.0e-2}
    )
    workers += [worker(k) for k in (1, 2)]
    rng, kills, last_kill = random.Random(0), 0, time.monotonic()
    try:
        while time.monotonic() - started < 600:
            alive = [w for w in workers if w.poll() is None]
            if not alive:
                break
            trials = open_study(postgres_url, "chaos").get_trials(deepcopy=False)
            # A worker in the middle of a trial: that is what must survive. (Killing one that
            # is still starting loses nothing, and on a loaded machine, where a start takes
            # longer than the kills' cadence, it would stall the study.)
            busy = {t.system_attrs.get(PID) for t in trials if t.state == TrialState.RUNNING}
            victims = [w for w in alive if w.pid in busy]
            if (
                victims
                and kills < MAX_KILLS
                and counted(trials) < TOTAL // 2
                and time.monotonic() - last_kill > rng.uniform(2, 4)
            ):
                victim = rng.choice(victims)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                kills += 1
                workers.append(worker(len(workers)))
                last_kill = time.monotonic()
            time.sleep(0.3)
    finally:
        for w in workers:
            stop(w)
    wall = time.monotonic() - started

    trials = open_study(postgres_url, "chaos").get_trials()
    states = [t.state for t in trials]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    retries = [t for t in trials if RETRY_OF in t.user_attrs]
    raised = [t for t in failed if "12 nodes is not supported" in t.user_attrs.get(FAIL_REASON, "")]
    with capsys.disabled():
        print(
            f"\nchaos: {kills} kills, {len(workers)} workers started, {len(retries)} retries, "
            f"{len(failed)} failed ({len(raised)} raised by the network, "
            f"{len(failed) - len(raised)} of killed workers), "
            f"{states.count(TrialState.COMPLETE)} complete, wall {wall:.0f} s"
        )
    assert kills >= 3
    assert all(w.returncode in (0, -signal.SIGKILL) for w in workers)
    assert counted(trials) == TOTAL
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert all(t.user_attrs.get(FAIL_REASON) for t in failed)
    assert raised  # the network's refusals failed their trials, and the study went on
    # No run folder was written by two trials: each trial's folder is its own.
    folders = [t.user_attrs[RUN_DIR] for t in trials if RUN_DIR in t.user_attrs]
    assert len(folders) == len(set(folders))
    for t in trials:
        if RUN_DIR in t.user_attrs:
            assert t.user_attrs[RUN_DIR].endswith(f"[{t.number}]")
    # best.yaml trains the best trial's value again.
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    best_yaml = tmp_path / "runs" / "Chaos_Opt" / "chaos" / "best.yaml"
    assert load_yaml(best_yaml)["net_config"]["nodes"] == best.params["net_config_nodes"]
    out = tmp_path / "again"
    proc = start(
        [
            sys.executable,
            str(TUNE.parent / "train.py"),
            "--config",
            str(best_yaml),
            "--output",
            str(out),
        ],
        tmp_path,
        logs / "train.log",
        env=env,
    )
    assert proc.wait(timeout=120) == 0, (logs / "train.log").read_text()
    (result,) = out.rglob("result.json")
    assert json.loads(result.read_text())["history"][-1] == pytest.approx(best.value, rel=1e-6)
