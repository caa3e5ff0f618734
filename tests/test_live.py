"""The live display: in a real terminal (tmux, read back with ``capture-pane``) tune.py and
train.py draw their progress region and leave their plain lines in the scrollback.

The units below draw the regions into a recorded console; the terminal tests run the
commands as a user would, each in its own tmux server. Without a terminal the commands
print their plain lines only, with no escape sequence: tests/test_tune.py's command-line
tests check that on the same runs that check the lines.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from services import TRAIN, optimize_yaml, tune_args

from lightning_hpo.attrs import EPOCHS_ATTR
from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import build, run_config_from_dict
from lightning_hpo.live.screen import Screen, clock, eta, wanted
from lightning_hpo.live.seeds import SeedBoard
from lightning_hpo.live.study import StudyView

# A finished trial's plain line (tuning.tuner.Progress).
TRIAL_LINE = re.compile(
    r"^\[(\d+)/(\d+)\] trial (\d+) (val_loss \S+|pruned at step \d+ .*|FAILED: .*) \| .* \| "
    r"done \d+, pruned \d+, failed \d+ \| best \S+( \(trial \d+\))?$"
)
RUN_YAML = """\
project: Live
device: cpu
seeds: {seeds}
epochs: {epochs}
batch_size: 128
data_config: {{n: 2000}}
net_config: {{nodes: 16, layers: 2}}
"""


def _draw(renderable, width: int = 120) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


# --------------------------------------------------------------------------- units


def test_wanted_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stream(io.StringIO):
        def __init__(self, tty: bool):
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setenv("TERM", "xterm-256color")
    assert wanted(Stream(True))
    assert not wanted(Stream(False))
    assert not wanted(io.StringIO())
    monkeypatch.setenv("TERM", "dumb")
    assert not wanted(Stream(True))


def test_clock_and_eta() -> None:
    assert clock(None) == "-"
    assert clock(75) == "1:15"
    assert clock(3725) == "1:02:05"
    assert eta(0.0, 10, 0.0, 5.0) is None  # no progress yet: unknown
    assert eta(2.0, 10, 0.0, 10.0) == pytest.approx(40.0)  # 8 left at 5 s each
    assert eta(6.0, 10, 4.0, 10.0) == pytest.approx(20.0)  # the pace of this run only


def test_study_view_shows_counts_best_and_each_running_trials_epoch() -> None:
    run_cfg = run_config_from_dict(yaml.safe_load(RUN_YAML.format(seeds="[1]", epochs=8)), "<run>")
    build(run_cfg, "<run>")
    space = {"optimizer_config": {"lr": {"type": "float", "min": 1e-4, "max": 1e-1}}}
    opt = optimize_config_from_dict(
        {"study_name": "v", "trials": 5, "search_space": space}, run_cfg, "<optimize>"
    )
    study = optuna.create_study()
    lr = FloatDistribution(1e-4, 1e-1)
    study.add_trial(create_trial(value=0.25, params={"lr": 0.01}, distributions={"lr": lr}))
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"lr": 0.09},
            distributions={"lr": lr},
            intermediate_values={0: 0.9},
        )
    )
    view = StudyView(opt)
    assert "opening the study" in _draw(view())
    view.watch(study)
    running = study.ask({"optimizer_config_lr": lr})
    running.set_user_attr(EPOCHS_ATTR, 8)
    running.report(0.61, 0)
    running.report(0.47, 2)
    text = _draw(view())
    assert "trials 2/5" in text
    assert "done 1, pruned 1, failed 0 | best 0.25 (trial 0)" in text
    assert "running 1 | elapsed 0:00 | ETA -" in text  # no progress since the view began
    assert re.search(r"trial 2 +\S+ +epoch 3/8 +val_loss 0\.47 +optimizer_config_lr=", text)
    running.report(0.40, 3)
    view.start -= 10  # ten seconds later, one epoch further: the ETA follows the pace
    text = _draw(view())
    assert "epoch 4/8" in text and "val_loss 0.4 " in text
    assert re.search(r"ETA \d+:\d\d", text)


def test_seed_board_moves_fused_seeds_together_and_marks_ended_ones() -> None:
    board = SeedBoard([1, 2], epochs=5, metric="val_loss")
    assert re.search(r"seed 1 .* epoch 0/5 +val_loss -", _draw(board()))
    board.epoch(3, {1: 0.5, 2: 0.25})
    text = _draw(board())
    assert re.search(r"seed 1 .* epoch 3/5 +val_loss 0\.5\b", text)
    assert re.search(r"seed 2 .* epoch 3/5 +val_loss 0\.25\b", text)
    board.ended_seed(1, 5, 0.125)
    text = _draw(board())
    assert "seeds 1/2 done" in text
    assert re.search(r"seed 1 .* epoch 5/5 +val_loss 0\.125 +done", text)


def test_screen_prints_lines_above_the_region_and_erases_it_on_exit() -> None:
    out, stdout = io.StringIO(), sys.stdout
    with Screen(lambda: "REGION-MARK", period=0.05, file=out, force_terminal=True) as screen:
        screen.echo("[1/2] trial 0 a line")
        print("a stray print")  # through the redirected stdout
        time.sleep(0.2)
        screen.relay("[2/2] trial 1 a child's line\n")
    text = out.getvalue()
    assert "REGION-MARK" in text  # drawn ...
    for line in ("[1/2] trial 0 a line", "a stray print", "[2/2] trial 1 a child's line"):
        assert text.count(line) == 1
    # ... and erased at the end (the lines after its last drawing clear it), stdout given back.
    assert "\x1b[2K" in text.rsplit("REGION-MARK", 1)[1]
    assert sys.stdout is stdout


# --------------------------------------------------------------------------- in a terminal


def _configs(tmp_path: Path, seeds: str = "[1]", epochs: int = 3, trials: int = 2):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(RUN_YAML.format(seeds=seeds, epochs=epochs))
    opt_yaml = tmp_path / "opt.yaml"
    opt_yaml.write_text(optimize_yaml("live", trials))
    return run_yaml, opt_yaml


class Terminal:
    """A command in a tmux pane (120x30 unless told) of a tmux server of its own."""

    def __init__(self, cmd: list[str], cwd: Path, width: int = 120):
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        self.socket = f"lightning-hpo-test-{uuid.uuid4().hex[:8]}"
        shell = f"cd {shlex.quote(str(cwd))} && {shlex.join(cmd)}; echo EXIT=$?; sleep 600"
        self.tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", "30", shell)

    def tmux(self, *args: str) -> str:
        # The server passes its environment on to the pane: a COLUMNS or LINES set here (a
        # test runner's) would tell the command a size other than the pane's.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if re.search(pattern, text, re.M):
                return text
            if "EXIT=" in text:
                pytest.fail(f"the command ended before the screen showed {pattern!r}:\n{text}")
            time.sleep(0.2)
        pytest.fail(f"no {pattern!r} on the screen after {timeout} s:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminals():
    opened: list[Terminal] = []

    def open_(cmd: list[str], cwd: Path, width: int = 120) -> Terminal:
        opened.append(Terminal(cmd, cwd, width))
        return opened[-1]

    yield open_
    for terminal in opened:
        terminal.close()


# Epochs enough for a run to outlast several redraws (one a second) on a fast, idle machine:
# 12 epochs of the small fused run took 0.8 s there, and the display never drew an epoch.
LONG = 60


def _scrollback_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_tune_draws_the_study_live_in_a_terminal(tmp_path: Path, terminals) -> None:
    run_yaml, opt_yaml = _configs(tmp_path, epochs=LONG, trials=2)
    term = terminals(tune_args(run_yaml, opt_yaml, "sqlite:///s.db", tmp_path / "runs"), tmp_path)
    live = term.wait_for(rf"^  trial \d+ .* epoch [1-9]\d*/{LONG} +val_loss \d", timeout=240)
    assert re.search(r"^trials [01]/2 .* done \d, pruned 0, failed 0 \| best ", live, re.M), live
    assert re.search(r"^  running 1 \| elapsed \d+:\d\d \| ETA (\d+:\d\d|-)$", live, re.M), live
    assert re.search(r"optimizer_config_lr=\S+", live)
    final = term.wait_for(r"^EXIT=\d+", timeout=240)
    assert "EXIT=0" in final, final
    lines = _scrollback_lines(final)
    trial_lines = [line for line in lines if TRIAL_LINE.match(line)]
    assert [TRIAL_LINE.match(line).group(1) for line in trial_lines] == ["1", "2"], final
    # The region is gone: the scrollback holds what a plain run prints, in its order.
    assert lines[0].startswith("preflight passed:")
    assert lines[1:3] == trial_lines and lines[3] == "Best trial:", final
    assert not any(w in final for w in ("elapsed", "running ", "ETA")), final


@pytest.mark.slow
def test_tune_with_workers_shows_theirs_live_and_each_line_once(tmp_path: Path, terminals) -> None:
    run_yaml, opt_yaml = _configs(tmp_path, epochs=LONG, trials=3)
    cmd = tune_args(run_yaml, opt_yaml, "sqlite:///s.db", tmp_path / "runs", "--workers", "2")
    term = terminals(cmd, tmp_path)
    term.wait_for(r"^  running 2 \|", timeout=300)
    final = term.wait_for(r"^EXIT=\d+", timeout=300)
    assert "EXIT=0" in final, final
    trial_lines = [line for line in _scrollback_lines(final) if TRIAL_LINE.match(line)]
    assert sorted(TRIAL_LINE.match(line).group(1) for line in trial_lines) == ["1", "2", "3"]
    assert len({TRIAL_LINE.match(line).group(3) for line in trial_lines}) == 3, final
    assert "running " not in final, final


@pytest.mark.slow
def test_train_draws_its_seeds_live_in_a_terminal(tmp_path: Path, terminals) -> None:
    run_yaml, _ = _configs(tmp_path, seeds="[1, 2]", epochs=LONG)
    term = terminals([sys.executable, str(TRAIN), "--config", str(run_yaml)], tmp_path)
    live = term.wait_for(rf"^  seed 2 .* epoch [1-9]\d*/{LONG} +val_loss \d", timeout=240)
    assert re.search(r"^seeds 0/2 done \| elapsed \d+:\d\d \| ETA (\d+:\d\d|-)$", live, re.M)
    epochs = re.findall(rf"^  seed [12] .* epoch (\d+)/{LONG} ", live, re.M)
    assert len(epochs) == 2 and epochs[0] == epochs[1], live  # fused: they move together
    final = term.wait_for(r"^EXIT=\d+", timeout=240)
    assert "EXIT=0" in final, final
    lines = _scrollback_lines(final)
    for seed in (1, 2):
        assert sum(line.startswith(f"seed {seed}: final val_loss") for line in lines) == 1, final
    assert any(line.startswith("final val_loss over 2 seed(s):") for line in lines)
    assert "elapsed" not in final and "epoch " not in final, final


@pytest.mark.slow
def test_ctrl_c_leaves_no_piece_of_the_region_behind(tmp_path: Path, terminals) -> None:
    # The terminal echoes ^C at the end of the region's last line, which the running
    # trial's parameters fill to the edge of an 80-column pane: it must not wrap there and
    # shift the region, whose erasing would then leave its top line behind.
    run_yaml, opt_yaml = _configs(tmp_path, epochs=40, trials=2)
    cmd = tune_args(run_yaml, opt_yaml, "sqlite:///s.db", tmp_path / "runs")
    term = terminals(cmd, tmp_path, width=80)
    term.wait_for(r"^  trial 0 .* epoch [1-9]\d*/40 .*…$", timeout=240)
    term.tmux("send-keys", "-t", "t", "C-c")
    final = term.wait_for(r"^EXIT=\d+", timeout=120)
    assert "EXIT=130" in final, final
    assert re.search(r"^interrupted$", final, re.M), final
    assert not re.search(r"trials \d/2|elapsed|epoch \d", final), final
