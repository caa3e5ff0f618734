"""Works after ``pip install``: the templates ship inside the package, ``lightning-hpo init``
writes them out, the commands fall back on them without a ``configs/`` folder, and
``--version`` answers everywhere. The commands run as a user would: the installed console
scripts, from a folder outside the checkout.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lightning_hpo import __version__
from lightning_hpo.cli import EXIT_BAD_INPUT
from lightning_hpo.config.scaffold import template_dir, templates

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def script(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed beside {sys.executable}: pip install -e . again"
    return str(path)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_every_config_template_is_packaged_with_the_same_content() -> None:
    # configs/ is the one copy: lightning_hpo/templates links to it (see scaffold.py), and
    # the wheel test below checks what a build copies.
    configs = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert [t.name for t in templates()] == configs
    for name in configs:
        packaged = template_dir() / name
        assert packaged.read_bytes() == (REPO / "configs" / name).read_bytes(), name


@pytest.mark.parametrize(
    "command",
    [
        ["lightning-hpo"],
        ["lightning-hpo", "init"],
        ["lightning-hpo", "report"],
        ["lightning-hpo-train"],
        ["lightning-hpo-tune"],
        ["python", "-m", "lightning_hpo"],
        ["python", "-m", "lightning_hpo", "train"],
    ],
    ids=" ".join,
)
def test_version_answers_on_every_command(command, tmp_path) -> None:
    argv = [sys.executable, *command[1:]] if command[0] == "python" else [script(command[0]), *command[1:]]  # fmt: skip
    proc = run([*argv, "--version"], tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"lightning-hpo {__version__}\n", "")


def test_init_writes_the_templates_and_a_short_run_trains_from_them(tmp_path) -> None:
    proc = run([script("lightning-hpo"), "init", "project"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    project = tmp_path / "project"
    for template in templates():
        assert (project / "configs" / template.name).read_bytes() == template.read_bytes()

    (project / "configs" / "run_template.yaml").write_text("epochs: 1\n")  # the user's edit
    again = run([script("lightning-hpo"), "init", "project"], tmp_path)
    assert again.returncode == EXIT_BAD_INPUT and again.stdout == ""
    assert len(again.stderr.splitlines()) == 1 and "never overwrites" in again.stderr
    assert (project / "configs" / "run_template.yaml").read_text() == "epochs: 1\n"

    trained = run(
        [script("lightning-hpo-train"), "--device", "cpu", "--epochs", "2", "--output", "out"],
        project,
    )
    assert trained.returncode == 0, trained.stderr
    assert "packaged" not in trained.stderr  # configs/ is there: it is the one used
    seeds = sorted((project / "out" / "MLP_Example").glob("*/[0-9]*"))
    assert [p.name for p in seeds] == ["231", "89", "928"]
    assert all((p / "provenance.yaml").exists() and (p / "result.json").exists() for p in seeds)


@pytest.mark.parametrize(
    ("command", "names"),
    [
        (["lightning-hpo-train", "--epochs", "0"], ["run_template.yaml"]),
        (["lightning-hpo-tune", "--trials", "0"], ["run_template.yaml", "optimize_template.yaml"]),
    ],
)
def test_without_configs_the_commands_use_the_packaged_templates(command, names, tmp_path) -> None:
    proc = run([script(command[0]), *command[1:]], tmp_path)
    # Both templates were read (the error is about the override, not a missing file) ...
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    error = proc.stderr.splitlines()[-1]
    assert error.startswith("error: ") and f"{command[1][2:]}: " in error
    # ... and the command said which file it used.
    for name in names:
        assert f"using the packaged {name} ({template_dir() / name})" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_wheel_carries_the_templates_and_the_console_scripts(tmp_path) -> None:
    source = tmp_path / "src"
    for name in ("lightning_hpo", "configs"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    offline = importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel")
    isolation = ["--no-build-isolation"] if offline else []
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path / "w"), *isolation],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "w").glob("lightning_hpo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for template in templates():
            packed = archive.read(f"lightning_hpo/templates/{template.name}")
            assert packed == (REPO / "configs" / template.name).read_bytes()
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    for line in ("lightning-hpo = lightning_hpo.cli:main", "lightning-hpo-train", "lightning-hpo-tune"):  # fmt: skip
        assert line in scripts
