"""Strict loading of run configs: every bad input is exit 2, one line naming file and key, nothing written.

The bad inputs live in tests/bad_inputs/run/, one file per case. Each starts with
comment lines the test reads:

    # expect: <text>      the error message must contain <text> (one or more lines)
    # requires: no-cuda   run the case as on a machine without a CUDA GPU
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lightning_hpo.cli import EXIT_BAD_INPUT, train_main
from lightning_hpo.config.run import RunConfig, load_run_config
from lightning_hpo.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "bad_inputs" / "run"
TEMPLATE = REPO_ROOT / "configs" / "run_template.yaml"


def _header(path: Path) -> dict[str, list[str]]:
    """The ``# key: value`` comment lines at the top of a corpus file."""
    header: dict[str, list[str]] = {}
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].partition(":")
        if sep:
            header.setdefault(key.strip(), []).append(value.strip())
    return header


def _corpus_cases():
    for path in sorted(CORPUS.glob("*.yaml")):
        header = _header(path)
        yield pytest.param(path, header.get("expect", []), header.get("requires", []), id=path.stem)


def assert_refused(code: int, err: str, out: str, source: str, expects: list[str]) -> str:
    """Exit 2, exactly one line on stderr naming ``source`` and every ``expects``, nothing on stdout."""
    assert code == EXIT_BAD_INPUT, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    message = lines[0]
    assert "Traceback" not in err
    assert source in message
    for text in expects:
        assert text in message, f"{text!r} not in {message!r}"
    assert out == ""
    return message


def assert_nothing_written(cwd: Path, output: Path) -> None:
    assert not output.exists(), f"{output} was created"
    assert list(cwd.iterdir()) == [], (
        f"files appeared in the working directory: {list(cwd.iterdir())}"
    )


def refuse(argv: list[str], tmp_path: Path, monkeypatch, capsys) -> tuple[int, str, str, Path]:
    """Run train.py's main in-process from an empty working directory, with --output under it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    output = cwd / "out"
    code = train_main([*argv, "--output", str(output)])
    captured = capsys.readouterr()
    return code, captured.err, captured.out, output


# --------------------------------------------------------------------------- the corpus


def test_corpus_has_every_case_and_every_case_says_what_to_expect() -> None:
    cases = sorted(CORPUS.glob("*.yaml"))
    assert len(cases) >= 24
    for path in cases:
        assert _header(path).get("expect"), f"{path.name} has no '# expect:' line"


@pytest.mark.parametrize(("path", "expects", "requires"), list(_corpus_cases()))
def test_bad_run_config_is_refused_on_one_line_and_nothing_is_written(
    path, expects, requires, tmp_path, monkeypatch, capsys
) -> None:
    if "no-cuda" in requires:
        import torch

        # The case is about a machine without a GPU: be one, also where there is a GPU.
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err, out, output = refuse(["--config", str(path)], tmp_path, monkeypatch, capsys)
    assert_refused(code, err, out, str(path), expects)
    assert_nothing_written(tmp_path / "cwd", output)


def test_nonexistent_config_is_refused(tmp_path, monkeypatch, capsys) -> None:
    missing = tmp_path / "no_such_config.yaml"
    code, err, out, output = refuse(["--config", str(missing)], tmp_path, monkeypatch, capsys)
    assert_refused(code, err, out, str(missing), ["file not found"])
    assert_nothing_written(tmp_path / "cwd", output)


def test_unreadable_config_is_refused(tmp_path, write_config) -> None:
    # As a command, in a child that obeys the permission bits even when the tests run as root.
    from privileges import obey_permissions

    path = write_config("locked.yaml")
    path.chmod(0)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    output = cwd / "out"
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(path), "--output", str(output)],
            cwd=cwd, capture_output=True, text=True, timeout=120, preexec_fn=obey_permissions,
        )  # fmt: skip
    finally:
        path.chmod(0o644)
    assert_refused(proc.returncode, proc.stderr, proc.stdout, str(path), ["cannot read the file"])
    assert_nothing_written(cwd, output)


def test_a_folder_given_as_config_is_refused(tmp_path, monkeypatch, capsys) -> None:
    # Unlike chmod 000, this cannot be read even as root.
    folder = tmp_path / "a_folder.yaml"
    folder.mkdir()
    code, err, out, output = refuse(["--config", str(folder)], tmp_path, monkeypatch, capsys)
    assert_refused(code, err, out, str(folder), ["cannot read the file"])
    assert_nothing_written(tmp_path / "cwd", output)


def test_bad_command_line_override_is_refused(tmp_path, monkeypatch, capsys, write_config) -> None:
    path = write_config()
    code, err, out, output = refuse(
        ["--config", str(path), "--epochs", "0"], tmp_path, monkeypatch, capsys
    )
    assert_refused(code, err, out, "epochs", ["must be > 0"])
    assert_nothing_written(tmp_path / "cwd", output)


def test_bad_command_line_override_names_the_option(
    tmp_path, monkeypatch, capsys, write_config
) -> None:
    path = write_config()
    code, err, out, output = refuse(
        ["--config", str(path), "--epochs", "0"], tmp_path, monkeypatch, capsys
    )
    assert code == EXIT_BAD_INPUT
    assert "--epochs" in err


def test_missing_required_component_argument_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys, write_config
) -> None:
    path = write_config(scheduler="torch.optim.lr_scheduler.StepLR", scheduler_config={})
    code, err, out, output = refuse(["--config", str(path)], tmp_path, monkeypatch, capsys)
    assert_refused(code, err, out, str(path), ["scheduler_config", "step_size"])
    assert_nothing_written(tmp_path / "cwd", output)


# --------------------------------------------------------------------------- as a real process


def _train_py(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_train_py_exits_2_with_one_line_and_no_traceback(tmp_path) -> None:
    config = CORPUS / "unknown_top_level_key.yaml"
    output = tmp_path / "out"
    proc = _train_py(["--config", str(config), "--output", str(output)], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert proc.stderr.startswith(f"error: {config}: epoch: unknown key; did you mean 'epochs'?")
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_train_py_debug_shows_the_traceback(tmp_path) -> None:
    config = CORPUS / "unknown_top_level_key.yaml"
    proc = _train_py(
        ["--config", str(config), "--output", str(tmp_path / "out"), "--debug"], tmp_path
    )
    assert proc.returncode not in (0, 2)
    assert "Traceback" in proc.stderr
    assert "ConfigError" in proc.stderr and "did you mean 'epochs'?" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- what loads, and as what


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_template_is_the_defaults() -> None:
    # configs/run_template.yaml says "these are the defaults": keep it and RunConfig in step.
    assert load_run_config(TEMPLATE) == RunConfig()


def test_float_without_a_dot_loads_as_a_float(tmp_path) -> None:
    path = _write(
        tmp_path,
        "optimizer_config: {lr: 1e-3}\nscheduler_config: {eta_min: 5E-6}\ndata_config: {noise: 1e-1, n: 1_000}\n",
    )
    cfg = load_run_config(path)
    assert cfg.optimizer_config == {"lr": 0.001}
    assert type(cfg.optimizer_config["lr"]) is float
    assert cfg.scheduler_config == {"eta_min": 5e-6}
    assert type(cfg.data_config["noise"]) is float and cfg.data_config["noise"] == 0.1
    assert type(cfg.data_config["n"]) is int and cfg.data_config["n"] == 1000


def test_integers_stay_integers(tmp_path) -> None:
    cfg = load_run_config(_write(tmp_path, "epochs: 10\nbatch_size: 32\n"))
    assert (cfg.epochs, cfg.batch_size) == (10, 32)


def test_integral_float_is_not_an_epoch_count(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(tmp_path, "epochs: 1e1\n"))
    assert info.value.key == "epochs"


def test_true_false_and_quoted_yes_are_accepted(tmp_path) -> None:
    cfg = load_run_config(
        _write(
            tmp_path,
            "project: 'yes'\nearly_stopping_config: {enabled: true}\ncheckpoint_config: {save_best: false}\n",
        )
    )
    assert cfg.project == "yes"
    assert cfg.early_stopping_config == {"enabled": True, "patience": 10, "min_delta": 0.0}
    assert cfg.checkpoint_config == {"save_best": False, "save_last": True}


def test_single_seed_becomes_a_list_and_null_section_is_empty(tmp_path) -> None:
    cfg = load_run_config(_write(tmp_path, "seeds: 7\ncriterion_config: null\n"))
    assert cfg.seeds == [7]
    assert cfg.criterion_config == {}


def test_min_delta_accepts_an_int_as_float(tmp_path) -> None:
    cfg = load_run_config(_write(tmp_path, "early_stopping_config: {min_delta: 0}\n"))
    assert type(cfg.early_stopping_config["min_delta"]) is float


def test_overrides_replace_file_values_and_none_keeps_them(tmp_path) -> None:
    cfg = load_run_config(
        _write(tmp_path, "epochs: 5\ndevice: cpu\n"), {"epochs": 3, "device": None}
    )
    assert (cfg.epochs, cfg.device) == (3, "cpu")


def test_config_error_carries_source_key_and_fix(tmp_path) -> None:
    path = _write(tmp_path, "optimizer_config: {lrr: 1e-3}\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    err = info.value
    assert (err.source, err.key) == (str(path), "optimizer_config.lrr")
    assert err.fix == "did you mean 'lr'?"
    assert "\n" not in str(err)


def test_unknown_key_lists_valid_keys_when_nothing_is_close(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(tmp_path, "zzzzzz: 1\n"))
    assert info.value.key == "zzzzzz"
    assert "epochs" in info.value.fix and "optimizer_config" in info.value.fix


def test_cuda_index_with_several_devices_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(tmp_path, "device: 'cuda:1'\ndevices: 2\n"))
    assert info.value.key == "devices"


def test_yaml11_boolean_message_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(CORPUS / "yaml11_boolean_yes.yaml")
    assert "enabled" in str(info.value)


def test_nested_duplicate_key_is_named_by_its_dotted_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(CORPUS / "duplicate_nested_key.yaml")
    assert info.value.key == "net_config.nodes"
