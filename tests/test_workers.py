"""``tune.py --workers``: workers pull trials until the study is full, and each gets its own
GPUs where GPUs are visible (tested with a device list injected on this CPU machine)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from services import tune_options

from lightning_hpo.attrs import DEVICES_ATTR, SURPLUS
from lightning_hpo.cli import EXIT_BAD_INPUT, tune_main
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.errors import ConfigError
from lightning_hpo.tuning.study import counted
from lightning_hpo.tuning.workers import device_sets, visible_gpus

pytestmark = pytest.mark.usefixtures("quiet")

RUN = {
    "project": "Workers",
    "device": "auto",
    "seeds": [1],
    "epochs": 2,
    "batch_size": 128,
    "data_config": {"n": 300},
    "net_config": {"nodes": 8, "layers": 1},
}
SPACE = {"optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-1, "log": True}}}


def configs(tmp_path: Path, trials: int, run: dict | None = None) -> list[str]:
    dump_yaml(RUN | (run or {}), tmp_path / "run.yaml")
    dump_yaml(
        {"study_name": "w", "trials": trials, "seed": 1, "pruner": None, "search_space": SPACE},
        tmp_path / "optimize.yaml",
    )
    return tune_options(
        tmp_path / "run.yaml",
        tmp_path / "optimize.yaml",
        f"sqlite:///{tmp_path}/s.db",
        tmp_path / "runs",
    )


def study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path}/s.db")


# --------------------------------------------------------------------------- the assignment


def test_one_worker_per_gpu_by_default() -> None:
    assert device_sets(["0", "1", "2", "3"], per_trial=1) == [["0"], ["1"], ["2"], ["3"]]


def test_trials_of_two_gpus_get_two_each() -> None:
    assert device_sets(["0", "1", "2", "3"], per_trial=2) == [["0", "1"], ["2", "3"]]
    assert device_sets(["0", "1", "2"], per_trial=2) == [["0", "1"]]  # one GPU left idle


def test_packing_several_workers_per_gpu_spreads_them_round_the_gpus() -> None:
    assert device_sets(["0", "1"], per_trial=1, per_gpu=2) == [["0"], ["1"], ["0"], ["1"]]
    assert device_sets(["0", "1"], per_trial=1, per_gpu=2, workers=2) == [["0"], ["1"]]


def test_more_workers_than_fit_is_a_one_line_error_saying_what_fits() -> None:
    with pytest.raises(
        ConfigError, match="use --workers 2 or fewer, or pack more with --trials-per-gpu 2"
    ):
        device_sets(["0", "1"], per_trial=1, workers=3)
    with pytest.raises(ConfigError, match="a trial trains on 4 GPUs, but 2 are visible"):
        device_sets(["0", "1"], per_trial=4)


def test_visible_gpus_are_named_as_cuda_visible_devices_names_them(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert visible_gpus() == []


def test_too_many_workers_for_the_gpus_is_refused_before_the_study(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert tune_main([*configs(tmp_path, 2), "--workers", "3"]) == EXIT_BAD_INPUT
    assert "--workers: 3 workers do not fit" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_each_worker_trains_on_the_gpus_it_was_given(tmp_path: Path, monkeypatch) -> None:
    # Two GPUs injected, two workers packed on each: four workers, each with its own
    # CUDA_VISIBLE_DEVICES. (Here no GPU exists, so each trains on the CPU it is given.)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert tune_main([*configs(tmp_path, 8), "--trials-per-gpu", "2"]) == 0
    trials = study(tmp_path).trials
    assert counted(trials) == 8
    # Two workers that finish at once may both ask for the last slot: the later one's trial
    # ends as surplus without running (test_studies), so it trained on nothing.
    ran = [t for t in trials if not t.system_attrs.get(SURPLUS)]
    assert len(ran) == 8
    gpus = [t.user_attrs[DEVICES_ATTR]["gpus"] for t in ran]
    assert set(gpus) == {"0", "1"}
    provenance = sorted((tmp_path / "runs").rglob("provenance.yaml"))
    assert len(provenance) == 8
    assert all("gpus: '0'" in p.read_text() or "gpus: '1'" in p.read_text() for p in provenance)


def _worker_children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_text()
        except OSError:
            continue
        if int(fields[1]) == pid and "--worker" in cmdline:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_a_worker_that_dies_leaves_no_share_behind(tmp_path: Path) -> None:
    args = configs(tmp_path, 8, {"epochs": 6, "data_config": {"n": 2000}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_hpo", "tune", *args, "--workers", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                trials = study(tmp_path).get_trials()
            except KeyError:  # the parent has not created the study yet
                trials = []
            if any(t.state == TrialState.COMPLETE for t in trials):
                break
            time.sleep(0.3)
        children = _worker_children(proc.pid)
        assert len(children) == 2
        subprocess.run(["kill", "-9", str(children[0])], check=True)
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "a worker was killed (SIGKILL): the others took over its trials" in out
    trials = study(tmp_path).get_trials()
    assert counted(trials) == 8
    assert TrialState.RUNNING not in [t.state for t in trials]
