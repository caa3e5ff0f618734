"""Classification with the built-in module: integer class targets log ``val_acc`` (alone and
fused, per seed and as the mean) in place of ``val_r2``, and the shipped example
(configs/classification_*.yaml, generated spirals, no download) tunes end to end on it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import optuna
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

from lightning_hpo.builtin.data import synthetic_classification
from lightning_hpo.config.optimize import load_optimize_config
from lightning_hpo.config.run import load_run_config
from lightning_hpo.fused.seeds import seed_metric
from lightning_hpo.metrics import VAL_ACC, VAL_LOSS, VAL_R2
from lightning_hpo.training.loading import load_run
from lightning_hpo.training.results import load_result
from lightning_hpo.training.runs import FitOptions, fit_run
from lightning_hpo.tuning.study import TuneOptions
from lightning_hpo.tuning.tuner import tune

pytestmark = pytest.mark.usefixtures("quiet")
optuna.logging.set_verbosity(optuna.logging.WARNING)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_EXAMPLE, OPTIMIZE_EXAMPLE = (
    CONFIGS / "classification_run.yaml",
    CONFIGS / "classification_optimize.yaml",
)


def example(**overrides):
    """The example run config on the CPU, shrunk by ``overrides``."""
    cfg = load_run_config(RUN_EXAMPLE, {"device": "cpu"})
    return dataclasses.replace(cfg, **overrides)


def small_example(**overrides):
    return example(
        epochs=3,
        seeds=[1, 2],
        data_config={"n": 600, "classes": 3},
        net_config={"nodes": 16, "layers": 2},
        **overrides,
    )


# --------------------------------------------------------------------------- the data


def test_synthetic_classification_is_seeded_split_integer_classes() -> None:
    state = torch.get_rng_state()
    train, val = synthetic_classification(n=1000, classes=4, val_fraction=0.25, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # its own generator: the global RNG untouched
    (x, y), (xv, yv) = train.tensors, val.tensors
    assert (x.shape, y.shape, xv.shape, yv.shape) == ((750, 2), (750,), (250, 2), (250,))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(torch.cat([y, yv]).tolist()) == {0, 1, 2, 3}
    again = synthetic_classification(n=1000, classes=4, val_fraction=0.25, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(train.tensors, again[0].tensors))
    other = synthetic_classification(n=1000, classes=4, val_fraction=0.25, seed=4)
    assert not torch.equal(x, other[0].tensors[0])


def test_synthetic_classification_is_not_linearly_separable() -> None:
    """A linear classifier trained to convergence stays far from what the example's MLP
    reaches: the task needs a network."""
    train, val = synthetic_classification()
    (x, y), (xv, yv) = train.tensors, val.tensors
    torch.manual_seed(0)
    linear = torch.nn.Linear(2, 3)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        accuracy = (linear(xv).argmax(1) == yv).float().mean().item()
    assert accuracy < 0.7


# --------------------------------------------------------------------------- val_acc


class KeepLogged(Callback):
    """Records ``trainer.callback_metrics`` after every real validation."""

    def __init__(self):
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _val_accuracy(net: torch.nn.Module) -> float:
    _, val = synthetic_classification(n=600, classes=3)
    x, y = val.tensors
    with torch.no_grad():
        return (net(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def fused_and_alone(tmp_path_factory, quiet):
    """The small example, its two seeds fused and seed after seed, monitoring val_acc."""
    root = tmp_path_factory.mktemp("classes")
    runs = {}
    for fuse in (True, False):
        cfg = small_example(fuse_seeds=fuse)
        keep = KeepLogged()
        dirs = [root / str(fuse) / str(s) for s in cfg.seeds]
        results = fit_run(
            cfg, cfg.seeds, dirs, FitOptions(monitor=VAL_ACC, mode="max", callbacks=(keep,))
        )
        runs[fuse] = (results, keep.epochs)
    return runs


def test_integer_targets_log_val_acc_and_no_val_r2(fused_and_alone) -> None:
    for fuse, (results, epochs) in fused_and_alone.items():
        assert len(epochs) == 3
        for logged in epochs:
            assert VAL_ACC in logged and VAL_LOSS in logged and VAL_R2 not in logged, fuse
            assert 0.0 <= logged[VAL_ACC] <= 1.0
        if fuse:  # every seed's own value, and the mean under the plain name
            for logged in epochs:
                per_seed = [logged[seed_metric(VAL_ACC, r.seed)] for r in results]
                assert logged[VAL_ACC] == pytest.approx(statistics.fmean(per_seed), abs=1e-6)
                assert seed_metric(VAL_R2, results[0].seed) not in logged


def test_val_acc_is_the_accuracy_of_the_trained_network(fused_and_alone) -> None:
    # last.ckpt holds the last epoch's weights: their accuracy on the validation split
    # is the last val_acc each seed recorded, fused or alone.
    for fuse, (results, _) in fused_and_alone.items():
        for r in results:
            assert r.history[-1] == pytest.approx(
                _val_accuracy(load_run(r.run_dir, "last")), abs=1e-6
            ), (fuse, r.seed)


def test_fused_val_acc_matches_each_seed_alone(fused_and_alone) -> None:
    fused, _ = fused_and_alone[True]
    alone, _ = fused_and_alone[False]
    for f, a in zip(fused, alone):
        assert f.together == 2 and a.together == 1
        # Accuracy counts argmax hits: a rounding difference may flip one of 120 points.
        assert f.history == pytest.approx(a.history, abs=1.5 / 120), f.seed


# --------------------------------------------------------------------------- the example


def _settings(tmp_path: Path) -> TuneOptions:
    return TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"))


def _tune_example(tmp_path: Path, run, trials: int):
    opt = load_optimize_config(OPTIMIZE_EXAMPLE, run, trials=trials)
    return opt, tune(run, opt, _settings(tmp_path), echo=lambda line: None)


def test_the_classification_example_tunes_on_val_acc_end_to_end(tmp_path: Path) -> None:
    opt, study = _tune_example(tmp_path, small_example(), trials=3)

    assert (opt.metric, opt.direction) == (VAL_ACC, "maximize")
    assert study.metric_names == [VAL_ACC]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for t in study.trials:
        assert 0.0 <= t.value <= 1.0
        assert sorted(t.intermediate_values) == [0, 1, 2]
        finals = [load_result(Path(t.user_attrs["run_dir"]) / str(s)).final for s in (1, 2)]
        assert t.value == pytest.approx(statistics.fmean(finals))  # the seeds' mean accuracy
        assert t.intermediate_values[2] == pytest.approx(t.value)
    assert study.best_value == max(t.value for t in study.trials)


@pytest.mark.slow
def test_the_classification_example_study_learns_the_spirals(tmp_path: Path) -> None:
    """The example as shipped (its data, epochs and search space), 6 trials, one seed."""
    opt, study = _tune_example(tmp_path, example(seeds=[89]), trials=6)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete
    chance = 1 / 3
    assert study.best_value > chance + 0.5 * (1 - chance)
    assert all(math.isfinite(t.value) for t in complete)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_epoch_sums_stay_exact_under_half_precision(dtype) -> None:
    # trainer_config {precision: bf16-true} runs the module in bf16: 50 batches of 180 hits
    # summed in bf16 would read 9216, an accuracy of 0.92 for 0.90.
    from lightning_hpo.builtin.supervised import SupervisedModule

    module = SupervisedModule(
        net=torch.nn.Identity(),
        criterion=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD,
        optimizer_config={"lr": 0.1},
    )
    y = torch.zeros(200, dtype=torch.long)
    scores = torch.zeros(200, 2, dtype=dtype)
    scores[180:, 1] = 1.0  # 180 of 200 right
    for _ in range(50):
        module._step([scores, y], "val")
    assert module._sums["val_hits"].item() == 50 * 180
    assert module._counts["val"] == 50 * 200  # counted in Python, exact at any precision
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    logged: dict[str, float] = {}
    module.on_validation_epoch_end()
    assert logged["val_acc"] == pytest.approx(0.9)
