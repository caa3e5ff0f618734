"""Provenance: every run folder and every study records the versions, the git commit, the
host, the device and the command line that produced it, and never a storage password."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from lightning_hpo import __version__
from lightning_hpo.attrs import PROVENANCE
from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.yamlio import load_yaml
from lightning_hpo.training import provenance
from lightning_hpo.training.runs import train
from lightning_hpo.tuning.study import TuneOptions, create_or_load_study
from lightning_hpo.tuning.tuner import tune

pytestmark = pytest.mark.usefixtures("quiet")

SECRET = "s3cret-Pa55"
ARGV = [
    "tune.py",
    "--storage",
    f"postgresql://bob:{SECRET}@db.example/hpo",
    f"--storage=mysql+pymysql://al:{SECRET}@db.example/hpo",
    f"--storage=postgresql://db.example/hpo?sslmode=require&password={SECRET}",
    "--trials",
    "2",
]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def outside_git(tmp_path, monkeypatch) -> Path:
    """A folder git cannot find a repository above, wherever tmp_path is."""
    folder = tmp_path / "plain"
    folder.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return folder


def test_the_record_has_versions_host_device_and_the_command() -> None:
    record = provenance.collect("cpu", argv=["train.py", "--epochs", "3"])
    assert record["versions"] == {
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "lightning": metadata.version("lightning"),
        "optuna": metadata.version("optuna"),
        "optuna-integration": metadata.version("optuna-integration"),
        "lightning-hpo": __version__,
    }
    assert record["host"] == socket.gethostname()
    assert record["device"] == "cpu"
    assert record["command"] == "train.py --epochs 3"


def test_git_commit_and_dirty_state_of_the_working_directory(outside_git) -> None:
    repo = outside_git
    git(repo, "init", "-q")
    (repo / "model.py").write_text("x = 1\n")
    git(repo, "add", "model.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    (repo / "notes.txt").write_text("untracked files do not make it dirty\n")
    assert provenance.git_state(repo) == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    (repo / "model.py").write_text("x = 2\n")
    assert provenance.git_state(repo) == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": True}


def test_no_git_section_outside_a_repository_or_without_git(outside_git, monkeypatch) -> None:
    assert provenance.git_state(outside_git) is None
    assert "git" not in provenance.collect("cpu", argv=["x"], cwd=outside_git)
    monkeypatch.setenv("PATH", str(outside_git))  # no git executable to be found
    assert provenance.git_state(Path(__file__).parent) is None


def test_storage_passwords_never_reach_the_command_line_record() -> None:
    command = provenance.command_line(ARGV)
    assert SECRET not in command
    assert "postgresql://bob:***@db.example/hpo" in command
    assert "--storage=mysql+pymysql://al:***@db.example/hpo" in command
    assert "postgresql://db.example/hpo?sslmode=require&password=***" in command


def test_every_seed_folder_of_a_run_has_its_provenance(
    small_config, tmp_path, monkeypatch, outside_git
) -> None:
    monkeypatch.setattr("sys.argv", ARGV)
    monkeypatch.chdir(outside_git)
    result = train(small_config(seeds=[1, 2]), tmp_path)
    for r in result.results:
        assert SECRET not in (r.run_dir / provenance.FILE).read_text()
        record = load_yaml(r.run_dir / provenance.FILE)
        assert record["versions"]["lightning-hpo"] == __version__
        assert record["device"] == "cpu" and "git" not in record
        assert record["command"] == provenance.command_line(ARGV)


def test_a_resumed_run_keeps_the_first_record_and_adds_its_own(tmp_path) -> None:
    first = provenance.write({"command": "train.py"}, tmp_path)
    provenance.write({"command": "train.py --resume"}, tmp_path)
    assert load_yaml(first) == {
        "command": "train.py",
        "resumed": [{"command": "train.py --resume"}],
    }


def test_a_study_keeps_its_creators_provenance_and_no_password(
    small_config, tmp_path, monkeypatch
) -> None:
    run = small_config(project="Prov")
    space = {"optimizer_config": {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-2}}}
    opt = optimize_config_from_dict(
        {"study_name": "prov", "trials": 1, "pruner": None, "search_space": space}, run, "<opt>"
    )
    settings = TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"))
    monkeypatch.setattr("sys.argv", ARGV)
    study = tune(run, opt, settings, echo=lambda line: None)
    stored = study.user_attrs[PROVENANCE]
    assert stored["versions"] == provenance.versions()
    assert stored["command"] == provenance.command_line(ARGV)
    assert SECRET not in json.dumps(study.user_attrs)
    trial_dir = Path(study.trials[0].user_attrs["run_dir"])
    assert SECRET not in (trial_dir / "1" / provenance.FILE).read_text()
    monkeypatch.setattr("sys.argv", ["tune.py", "--trials", "5"])  # a later worker or rerun
    again = create_or_load_study(run, opt, settings)
    assert again.user_attrs[PROVENANCE] == stored
