"""The optimize config and the storage URL are checked before anything is created.

Bad inputs run the real command line (``python tune.py ...``) in an empty folder and
must end with exit status 2, one line on stderr naming the file and the key, no
traceback, and no new file or folder. The search-space helpers are unit-tested
in-process.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial

from lightning_hpo.config.optimize import load_optimize_config, optimize_config_from_dict
from lightning_hpo.config.run import RunConfig, run_config_from_dict
from lightning_hpo.errors import ConfigError
from lightning_hpo.pruners.pfl import PFLPruner

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[1]
TUNE = REPO / "tune.py"
BAD_INPUTS = Path(__file__).resolve().parent / "bad_inputs" / "optimize"

SMALL_RUN = """\
project: Tiny
device: cpu
seeds: [1]
epochs: 2
batch_size: 128
data_config: {n: 500}
net_config: {nodes: 16, layers: 2}
"""

GOOD_OPTIMIZE = """\
study_name: tiny_study
trials: 2
seed: 1
pruner: null
search_space:
  optimizer_config:
    lr: {type: float, min: 1.0e-4, max: 1.0e-2, log: true}
  net_config:
    nodes: {type: categorical, choices: [16, 32]}
"""

# The optimize YAML block of /work/shared/reference/hpo-design-chapter.md, verbatim
# except for pruner.name (the chapter's `pruner.PFLPruner` is its own module).
REFERENCE_CHAPTER_OPTIMIZE = """\
# configs/optimize_template.yaml
study_name: Optimize_MLP_Example # Name for this search process
trials: 20          # Run 20 different experiments (trials)
seed: 42            # Random seed for reproducibility of the search itself
metric: val_loss    # The score to optimize (from training logs)
direction: minimize # We want the lowest validation loss

# How Optuna should pick parameters (Tree-structured Parzen Estimator is common)
sampler:
  name: optuna.samplers.TPESampler
  # kwargs: # Optional arguments for the sampler
  #   n_startup_trials: 5 # How many trials to run randomly before optimizing

# (We'll cover the 'pruner' in the next chapter)
pruner:
  name: lightning_hpo.PFLPruner
  # ... pruner settings ...

# Define the hyperparameters to search (the "ingredients" to vary)
search_space:
  # Category corresponding to RunConfig field 'net_config'
  net_config:
    nodes:
      type: categorical # Choose from a list of options
      choices: [32, 64, 128]
    layers:
      type: int         # Integer value
      min: 3            # Minimum number of layers
      max: 5            # Maximum number of layers
  # Category corresponding to RunConfig field 'optimizer_config'
  optimizer_config:
    lr:
      type: float       # Floating-point number
      min: 1.e-4        # Minimum learning rate (0.0001)
      max: 1.e-2        # Maximum learning rate (0.01)
      log: true         # Search this space logarithmically (good for rates)
  # (You can add more hyperparameters here if needed)
"""


# --------------------------------------------------------------------------- helpers


def listing(root: Path) -> set[str]:
    """Every path under ``root`` (files and folders), relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_tune(cwd: Path, *args: str, timeout: int = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TUNE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess) -> str:
    """Exit status 2, exactly one line on stderr, no traceback; returns that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def tiny_configs(tmp_path: Path) -> tuple[Path, Path]:
    """A small run config and a valid optimize config, written into ``tmp_path``."""
    run = tmp_path / "run.yaml"
    run.write_text(SMALL_RUN)
    opt = tmp_path / "optimize.yaml"
    opt.write_text(GOOD_OPTIMIZE)
    return run, opt


def small_run() -> RunConfig:
    return run_config_from_dict(
        {
            "project": "Tiny",
            "device": "cpu",
            "seeds": [1],
            "epochs": 2,
            "data_config": {"n": 500},
            "net_config": {"nodes": 16, "layers": 2},
        }
    )


def opt_from(run: RunConfig, **data):
    base = {"study_name": "unit", "trials": 3, "seed": 1, "pruner": None}
    base.update(data)
    return optimize_config_from_dict(base, run, "<test>")


def first_params(opt, run: RunConfig) -> dict:
    """The parameters a fresh study with ``opt``'s sampler suggests first."""
    study = optuna.create_study(sampler=opt.make_sampler(), direction=opt.direction)
    trial = study.ask()
    opt.suggest(trial, run)
    return dict(trial.params)


# --------------------------------------------------------------------------- bad-input corpus


def _corpus() -> list:
    cases = []
    for path in sorted(BAD_INPUTS.glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines and lines[0].startswith("# expect: "), (
            f"{path.name} must start with '# expect: <key fragment>'"
        )
        marks = []
        for line in lines[1:]:
            if line.startswith("# xfail: "):
                marks.append(
                    pytest.mark.xfail(reason="BUG: " + line[len("# xfail: ") :], strict=True)
                )
        cases.append(pytest.param(path, id=path.stem, marks=marks))
    return cases


def _expectations(path: Path) -> tuple[str, list[str]]:
    lines = path.read_text().splitlines()
    key = lines[0][len("# expect: ") :].strip()
    also = [line[len("# also: ") :].strip() for line in lines[1:] if line.startswith("# also: ")]
    return key, also


def test_corpus_is_complete() -> None:
    # One file per documented bad input; a missing file would silently shrink the check.
    names = {p.stem for p in BAD_INPUTS.glob("*.yaml")}
    required = {
        "min_greater_than_max", "log_min_not_positive", "log_with_step", "step_not_dividing_range",
        "nan_bound", "inf_bound", "empty_choices", "unknown_type", "bad_direction", "trials_zero",
        "metric_never_logged", "unknown_top_level_key", "unknown_search_group", "optimizer_unknown_param",
        "sampler_unresolvable", "pruner_unresolvable", "yaml11_boolean_choices", "duplicate_key",
        "grid_float_without_step", "batch_size_min_zero",
    }  # fmt: skip
    assert required <= names, required - names


@pytest.mark.parametrize("case", _corpus())
def test_bad_optimize_config_is_one_line_and_creates_nothing(case: Path, tmp_path: Path) -> None:
    key, also = _expectations(case)
    run = tmp_path / "run.yaml"
    run.write_text(SMALL_RUN)
    before = listing(tmp_path)

    proc = run_tune(
        tmp_path,
        "--run-config", str(run),
        "--optimize-config", str(case),
        "--storage", f"sqlite:///{tmp_path}/s.db",
        "--output", str(tmp_path / "runs"),
    )  # fmt: skip

    line = assert_one_line_error(proc)
    assert str(case) in line, line
    assert key in line, line
    for fragment in also:
        assert fragment in line, line
    assert listing(tmp_path) == before


# --------------------------------------------------------------------------- good configs


def test_reference_chapter_optimize_yaml_loads(tmp_path: Path) -> None:
    path = tmp_path / "optimize_template.yaml"
    path.write_text(REFERENCE_CHAPTER_OPTIMIZE)
    opt = load_optimize_config(path, RunConfig())
    assert (opt.study_name, opt.trials, opt.seed, opt.metric, opt.direction) == (
        "Optimize_MLP_Example",
        20,
        42,
        "val_loss",
        "minimize",
    )
    # The reference's parameter names, e.g. 'net_config_nodes' in its sample output.
    assert [p.name for p in opt.params] == [
        "net_config_nodes",
        "net_config_layers",
        "optimizer_config_lr",
    ]
    lr = opt.params[2]
    assert (lr.min, lr.max, lr.log) == (1e-4, 1e-2, True)
    assert isinstance(opt.make_sampler(), optuna.samplers.TPESampler)
    assert isinstance(opt.make_pruner(), PFLPruner)


CHAPTER = Path("/work/shared/reference/hpo-design-chapter.md")


@pytest.mark.skipif(not CHAPTER.is_file(), reason="the reference chapter is not on this machine")
def test_reference_yaml_above_is_the_chapters_block() -> None:
    # Guards the copy: the chapter's first optimize YAML block, with only pruner.name changed.
    blocks = re.findall(r"```yaml\n(.*?)```", CHAPTER.read_text(), re.S)
    block = next(textwrap.dedent(b) for b in blocks if "search_space:" in b and "study_name:" in b)
    assert (
        block.replace("name: pruner.PFLPruner", "name: lightning_hpo.PFLPruner")
        == REFERENCE_CHAPTER_OPTIMIZE
    )


def test_reference_chapter_pruner_path_is_rejected_naming_the_key(tmp_path: Path) -> None:
    # Unchanged, the chapter names its own module 'pruner', which this package does not have.
    path = tmp_path / "optimize_template.yaml"
    path.write_text(
        REFERENCE_CHAPTER_OPTIMIZE.replace(
            "name: lightning_hpo.PFLPruner", "name: pruner.PFLPruner"
        )
    )
    with pytest.raises(ConfigError) as info:
        load_optimize_config(path, RunConfig())
    assert info.value.key == "pruner.name"
    assert info.value.source == str(path)


def test_good_tiny_configs_load(tiny_configs) -> None:
    # The configs the error tests start from are themselves valid.
    from lightning_hpo.config.run import load_run_config

    run_path, opt_path = tiny_configs
    run = load_run_config(run_path)
    opt = load_optimize_config(opt_path, run)
    assert [p.name for p in opt.params] == ["optimizer_config_lr", "net_config_nodes"]


# --------------------------------------------------------------------------- search helpers


@pytest.mark.parametrize("sampler", ["optuna.samplers.RandomSampler", "optuna.samplers.TPESampler"])
def test_seed_reaches_the_sampler(sampler: str) -> None:
    run = small_run()
    space = {
        "optimizer_config": {"lr": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True}},
        "net_config": {"layers": {"type": "int", "min": 1, "max": 100}},
    }
    same_a = first_params(opt_from(run, sampler={"name": sampler}, seed=7, search_space=space), run)
    same_b = first_params(opt_from(run, sampler={"name": sampler}, seed=7, search_space=space), run)
    other = first_params(opt_from(run, sampler={"name": sampler}, seed=8, search_space=space), run)
    assert same_a == same_b
    assert other != same_a


def test_a_seed_at_the_top_of_numpys_range_still_seeds_every_trial() -> None:
    run = small_run()
    space = {"optimizer_config": {"lr": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True}}}
    opt = opt_from(
        run, sampler={"name": "optuna.samplers.RandomSampler"}, seed=2**32 - 1, search_space=space
    )
    assert opt.seed_per_trial()
    # trial 1's seed wraps to 0 instead of overflowing numpy's range
    assert opt.make_sampler(seed_offset=1)._rng.rng.random() == (
        optuna.samplers.RandomSampler(seed=0)._rng.rng.random()
    )


def test_explicit_sampler_seed_kwarg_wins_over_config_seed() -> None:
    run = small_run()
    space = {"optimizer_config": {"lr": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True}}}
    explicit = opt_from(
        run,
        sampler={"name": "optuna.samplers.RandomSampler", "kwargs": {"seed": 3}},
        seed=99,
        search_space=space,
    )
    plain = opt_from(
        run, sampler={"name": "optuna.samplers.RandomSampler"}, seed=3, search_space=space
    )
    assert first_params(explicit, run) == first_params(plain, run)


def test_grid_sampler_gets_its_grid_from_the_search_space() -> None:
    run = small_run()
    opt = opt_from(
        run,
        sampler={"name": "optuna.samplers.GridSampler"},
        search_space={
            "net_config": {
                "layers": {"type": "int", "min": 1, "max": 5, "step": 2},
                "activation": {"type": "categorical", "choices": ["ReLU", "GELU"]},
            },
            "optimizer_config": {
                "lr": {"type": "float", "min": 0.001, "max": 0.003, "step": 0.001}
            },
        },
    )
    study = optuna.create_study(sampler=opt.make_sampler())
    seen = []

    def objective(trial):
        cfg = opt.suggest(trial, run)
        seen.append(
            (
                cfg.net_config["layers"],
                cfg.net_config["activation"],
                round(cfg.optimizer_config["lr"], 9),
            )
        )
        return 0.0

    study.optimize(objective, n_trials=50)  # GridSampler stops the study when the grid is done
    expected = set(itertools.product([1, 3, 5], ["ReLU", "GELU"], [0.001, 0.002, 0.003]))
    assert len(seen) == len(expected) == 18
    assert set(seen) == expected


class RecordingPruner(optuna.pruners.BasePruner):
    """A pruner named by import path from this module; remembers its arguments."""

    def __init__(self, patience: int = 1, label: str = "x"):
        self.patience, self.label = patience, label

    def prune(self, study, trial) -> bool:
        return False


def test_any_sampler_and_pruner_by_import_path() -> None:
    run = small_run()
    space = {"optimizer_config": {"lr": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True}}}
    opt = opt_from(
        run,
        sampler={"name": "optuna.samplers.RandomSampler"},
        pruner={
            "name": "optuna.pruners.MedianPruner",
            "kwargs": {"n_startup_trials": 3, "n_warmup_steps": 2},
        },
        search_space=space,
    )
    assert isinstance(opt.make_sampler(), optuna.samplers.RandomSampler)
    median = opt.make_pruner()
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (3, 2)

    own = opt_from(
        run,
        pruner={"name": f"{__name__}.RecordingPruner", "kwargs": {"patience": 4, "label": "mine"}},
        search_space=space,
    )
    pruner = own.make_pruner()
    assert type(pruner).__name__ == "RecordingPruner"
    assert (pruner.patience, pruner.label) == (4, "mine")


def median_pruner_factory(n_startup_trials: int = 1):
    """A factory function named as the sampler: it returns a pruner."""
    return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials)


def test_a_factory_that_returns_the_wrong_kind_is_refused_naming_the_key() -> None:
    space = {"optimizer_config": {"lr": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True}}}
    with pytest.raises(ConfigError) as err:
        opt_from(
            small_run(), sampler={"name": f"{__name__}.median_pruner_factory"}, search_space=space
        )
    assert err.value.key == "sampler.name"
    assert "is a pruner, not a sampler" in err.value.problem
    # The same factory as the pruner is fine.
    opt = opt_from(
        small_run(), pruner={"name": f"{__name__}.median_pruner_factory"}, search_space=space
    )
    assert isinstance(opt.make_pruner(), optuna.pruners.MedianPruner)


def test_pruner_null_means_no_pruning() -> None:
    opt = opt_from(
        small_run(),
        pruner=None,
        search_space={"batch_size": {"type": "categorical", "choices": [32]}},
    )
    assert isinstance(opt.make_pruner(), optuna.pruners.NopPruner)


def test_top_level_scalars_are_searchable() -> None:
    run = small_run()
    opt = opt_from(
        run,
        search_space={
            "batch_size": {"type": "categorical", "choices": [32, 64]},
            "epochs": {"type": "int", "min": 2, "max": 4},
        },
    )
    assert [p.name for p in opt.params] == ["batch_size", "epochs"]
    cfg = opt.suggest(optuna.trial.FixedTrial({"batch_size": 64, "epochs": 3}), run)
    assert isinstance(cfg, RunConfig)
    assert (cfg.batch_size, cfg.epochs) == (64, 3)
    assert (run.batch_size, run.epochs) == (256, 2)  # the base config is untouched

    study = optuna.create_study(sampler=opt.make_sampler())
    trial = study.ask()
    cfg = opt.suggest(trial, run)
    assert (cfg.batch_size, cfg.epochs) == (trial.params["batch_size"], trial.params["epochs"])
    assert cfg.batch_size in (32, 64) and 2 <= cfg.epochs <= 4


def test_parameter_names_are_group_underscore_param() -> None:
    run = small_run()
    opt = opt_from(
        run,
        search_space={
            "net_config": {
                "nodes": {"type": "categorical", "choices": [8, 16]},
                "layers": {"type": "int", "min": 1, "max": 3},
            },
            "optimizer_config": {"weight_decay": {"type": "float", "min": 0.0, "max": 0.1}},
            "data_config": {"noise": {"type": "float", "min": 0.01, "max": 0.1}},
        },
    )
    names = [
        "net_config_nodes",
        "net_config_layers",
        "optimizer_config_weight_decay",
        "data_config_noise",
    ]
    assert [p.name for p in opt.params] == names
    assert set(opt.distributions()) == set(names)
    study = optuna.create_study(sampler=opt.make_sampler())
    trial = study.ask()
    cfg = opt.suggest(trial, run)
    assert set(trial.params) == set(names)
    assert cfg.net_config["nodes"] == trial.params["net_config_nodes"]
    assert cfg.net_config["layers"] == trial.params["net_config_layers"]
    assert cfg.optimizer_config["weight_decay"] == trial.params["optimizer_config_weight_decay"]
    assert (
        cfg.optimizer_config["lr"] == run.optimizer_config["lr"]
    )  # unsearched keys keep their value
    assert cfg.data_config == {"n": 500, "noise": trial.params["data_config_noise"]}
    # merge() reads the same names back.
    merged = opt.merge(run, trial.params)
    assert merged.to_dict() == cfg.to_dict()


# --------------------------------------------------------------------------- storage errors


def _tune_args(tmp_path: Path, tiny_configs, storage: str, output: str | None = None) -> list[str]:
    run, opt = tiny_configs
    return [
        "--run-config",
        str(run),
        "--optimize-config",
        str(opt),
        "--storage",
        storage,
        "--output",
        output or str(tmp_path / "runs"),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://nobody:secret@127.0.0.1:1/x",
        "mysql+pymysql://nobody:secret@127.0.0.1:1/x",
        "journal+redis://:secret@127.0.0.1:1/0",
    ],
    ids=["postgresql", "mysql", "redis"],
)
def test_unreachable_storage_is_one_line_without_password(
    url: str, tmp_path: Path, tiny_configs
) -> None:
    before = listing(tmp_path)
    proc = run_tune(tmp_path, *_tune_args(tmp_path, tiny_configs, url))
    line = assert_one_line_error(proc)
    assert "secret" not in proc.stdout + proc.stderr
    assert "127.0.0.1" in line and "cannot open the storage" in line
    # Never falls back to a SQLite file (the default would be Tiny_Opt.db here).
    assert listing(tmp_path) == before


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _without(tmp_path: Path, module: str) -> dict[str, str]:
    """The environment with ``module`` hidden, as if it were not installed: a package of that
    name first on PYTHONPATH whose import fails."""
    folder = tmp_path / f"without_{module}"
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(
        f"raise ImportError('{module} is hidden by the test')\n"
    )
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
    }


def _assert_reached_the_server(proc: subprocess.CompletedProcess) -> None:
    """The driver loaded and tried to connect (nothing listens on port 1)."""
    line = assert_one_line_error(proc)
    assert "Failed to import" not in line and "No module named" not in line, line
    assert (
        "Connection refused" in line or "could not connect" in line or "connection failed" in line
    ), line


def test_postgresql_url_uses_the_installed_postgres_driver(tmp_path: Path, tiny_configs) -> None:
    # The postgres and test extras install psycopg 3, which a plain postgresql:// means.
    assert _has("psycopg"), "psycopg 3 is not installed (pip install -e '.[test]')"
    proc = run_tune(
        tmp_path, *_tune_args(tmp_path, tiny_configs, "postgresql://nobody:secret@127.0.0.1:1/x")
    )
    _assert_reached_the_server(proc)


def test_psycopg2_alone_is_used_through_its_url(tmp_path: Path, tiny_configs) -> None:
    # Under SQLAlchemy >= 2.1 a plain postgresql:// means psycopg 3; psycopg2 is named in the URL.
    if not _has("psycopg2"):
        pytest.skip("psycopg2 is not installed (the test extra installs psycopg 3)")
    url = "postgresql+psycopg2://nobody:secret@127.0.0.1:1/x"
    proc = run_tune(
        tmp_path, *_tune_args(tmp_path, tiny_configs, url), env=_without(tmp_path, "psycopg")
    )
    _assert_reached_the_server(proc)


def test_password_with_slash_is_not_printed(tmp_path: Path, tiny_configs) -> None:
    before = listing(tmp_path)
    proc = run_tune(
        tmp_path,
        *_tune_args(tmp_path, tiny_configs, "mysql+pymysql://nobody:se/cret@127.0.0.1:1/x"),
    )
    assert_one_line_error(proc)
    assert listing(tmp_path) == before
    assert "cret" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "url",
    [
        "nobody:s3cret@127.0.0.1:1/x",  # the scheme forgotten
        "postgresql://nobody@127.0.0.1:1/x?sslpassword=s3cret",
        "postgresql://nobody@127.0.0.1:1/x?sslmode=require&password=s3cret",
    ],
)
def test_password_of_a_mistyped_or_query_url_is_not_printed(
    tmp_path: Path, tiny_configs, url: str
) -> None:
    before = listing(tmp_path)
    proc = run_tune(tmp_path, *_tune_args(tmp_path, tiny_configs, url))
    assert_one_line_error(proc)
    assert listing(tmp_path) == before
    assert "s3cret" not in proc.stdout + proc.stderr


def test_corrupt_sqlite_file_is_refused_and_left_untouched(tmp_path: Path, tiny_configs) -> None:
    garbage = b"\x00\x13garbage, not a database\n" * 50
    db = tmp_path / "x.db"
    db.write_bytes(garbage)
    before = listing(tmp_path)
    proc = run_tune(tmp_path, *_tune_args(tmp_path, tiny_configs, "sqlite:///x.db"))
    line = assert_one_line_error(proc)
    assert "x.db" in line and "not an SQLite database" in line
    assert db.read_bytes() == garbage
    assert listing(tmp_path) == before


def test_sqlite_file_with_valid_header_but_corrupt_body_is_refused_and_left_untouched(
    tmp_path: Path, tiny_configs
) -> None:
    content = b"SQLite format 3\x00" + bytes(range(256)) * 20
    db = tmp_path / "x.db"
    db.write_bytes(content)
    before = listing(tmp_path)
    proc = run_tune(tmp_path, *_tune_args(tmp_path, tiny_configs, "sqlite:///x.db"))
    line = assert_one_line_error(proc)
    assert "x.db" in line and "not a database" in line
    assert db.read_bytes() == content
    assert listing(tmp_path) == before


def test_output_folder_that_cannot_be_created(tmp_path: Path, tiny_configs) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    before = listing(tmp_path)
    proc = run_tune(
        tmp_path,
        *_tune_args(
            tmp_path, tiny_configs, f"sqlite:///{tmp_path}/s.db", output=str(blocker / "runs")
        ),
    )
    line = assert_one_line_error(proc)
    assert "--output" in line and "blocker" in line
    assert listing(tmp_path) == before


def test_read_only_output_folder(tmp_path: Path, tiny_configs) -> None:
    from privileges import obey_permissions  # root too: the child obeys the permission bits

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        before = listing(tmp_path)
        proc = run_tune(
            tmp_path,
            *_tune_args(
                tmp_path, tiny_configs, f"sqlite:///{tmp_path}/s.db", output=str(locked / "runs")
            ),
            preexec_fn=obey_permissions,
        )
        line = assert_one_line_error(proc)
        assert "--output" in line and "locked" in line
        assert listing(tmp_path) == before
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("url", ["mongodb://localhost/x", "s.db", "sqlite:/s.db"])
def test_unknown_storage_scheme(url: str, tmp_path: Path, tiny_configs) -> None:
    before = listing(tmp_path)
    proc = run_tune(tmp_path, *_tune_args(tmp_path, tiny_configs, url))
    line = assert_one_line_error(proc)
    assert "--storage" in line and "unknown storage URL" in line
    assert listing(tmp_path) == before


# --------------------------------------------------------------------------- existing studies


def test_existing_study_with_other_direction(tmp_path: Path, tiny_configs) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="tiny_study", storage=url, direction="minimize")
    _, opt = tiny_configs
    opt.write_text(GOOD_OPTIMIZE + "direction: maximize\nmetric: val_r2\n")
    before = listing(tmp_path)
    proc = run_tune(tmp_path, *_tune_args(tmp_path, tiny_configs, url))
    line = assert_one_line_error(proc)
    assert "minimize" in line and "maximize" in line and "tiny_study" in line
    assert listing(tmp_path) == before  # no runs/ folder
    assert optuna.load_study(study_name="tiny_study", storage=url).trials == []


def test_existing_study_with_incompatible_search_space(tmp_path: Path, tiny_configs) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="tiny_study", storage=url, direction="minimize")
    study.add_trial(
        create_trial(
            value=0.5,
            params={"optimizer_config_lr": 1e-3, "net_config_nodes": 16},
            distributions={
                "optimizer_config_lr": FloatDistribution(1e-4, 1e-2, log=True),
                "net_config_nodes": CategoricalDistribution(
                    [16, 64]
                ),  # the config now says [16, 32]
            },
        )
    )
    before = listing(tmp_path)
    proc = run_tune(tmp_path, *_tune_args(tmp_path, tiny_configs, url))
    line = assert_one_line_error(proc)
    assert "search_space.net_config.nodes" in line
    assert "optimizer_config" not in line  # the compatible parameter is not blamed
    assert listing(tmp_path) == before
    assert len(optuna.load_study(study_name="tiny_study", storage=url).trials) == 1


def test_existing_study_with_compatible_config_is_accepted_in_process(tmp_path: Path) -> None:
    # The counterpart of the two checks above: same direction, same choices, loads fine.
    from lightning_hpo.tuning.study import TuneOptions, create_or_load_study

    run = small_run()
    opt = opt_from(
        run,
        study_name="tiny_study",
        search_space={"net_config": {"nodes": {"type": "categorical", "choices": [16, 32]}}},
    )
    settings = TuneOptions(
        storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"), heartbeat=None
    )
    first = create_or_load_study(run, opt, settings)
    first.add_trial(
        create_trial(value=1.0, params={"net_config_nodes": 32}, distributions=opt.distributions())
    )
    again = create_or_load_study(run, opt, settings)
    assert len(again.trials) == 1
    assert math.isclose(again.best_value, 1.0)
