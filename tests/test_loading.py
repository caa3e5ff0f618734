"""Reusable checkpoints: ``lightning_hpo.load_run`` gives back a run folder's trained network,
and ``SupervisedModule.load_from_checkpoint(path)`` works with no other argument, for runs
trained alone and for each seed of a fused run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import lightning_hpo
from lightning_hpo.builtin.supervised import SupervisedModule
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.loading import load_run
from lightning_hpo.training.runs import FitOptions, fit_run, seed_dirs

pytestmark = pytest.mark.usefixtures("quiet")

X = torch.linspace(0, 1, 50).reshape(-1, 1)  # inputs of the synthetic regression


class FinalPredictions(Callback):
    """The trained module's predictions on ``X`` when training ends (one row per fused seed)."""

    def __init__(self):
        self.pred: torch.Tensor | None = None

    def on_train_end(self, trainer, pl_module):
        with torch.no_grad():
            x = X.to(pl_module.device)
            fused = hasattr(pl_module, "states")
            self.pred = pl_module(x, shared=True) if fused else pl_module(x)[None]


@pytest.fixture(scope="module")
def trained(small_config, tmp_path_factory, quiet):
    """Two seeds fused, and one seed alone, with the predictions of the modules they trained."""
    root = tmp_path_factory.mktemp("loading")
    runs = {}
    for name, seeds, fuse in (("fused", [1, 2], True), ("alone", [1], False)):
        cfg = small_config(project=name, seeds=seeds, fuse_seeds=fuse, epochs=3)
        keep = FinalPredictions()
        results = fit_run(cfg, seeds, seed_dirs(cfg, root), FitOptions(callbacks=(keep,)))
        assert all(r.together == len(seeds) for r in results)
        runs[name] = (results, keep.pred)
    return runs


@pytest.mark.parametrize("name", ["fused", "alone"])
def test_load_run_predicts_as_the_trained_module(trained, name: str) -> None:
    results, pred = trained[name]
    for index, r in enumerate(results):
        net = lightning_hpo.load_run(r.run_dir, which="last")
        assert isinstance(net, torch.nn.Module) and not net.training
        with torch.no_grad():
            mine = net(X)
        if name == "alone":
            assert torch.equal(mine, pred[index])
        else:  # the stacked forward rounds differently from one network's
            torch.testing.assert_close(mine, pred[index], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fused", "alone"])
@pytest.mark.parametrize("which", ["best", "last"])
def test_load_from_checkpoint_needs_no_other_argument(trained, name: str, which: str) -> None:
    results, _ = trained[name]
    for r in results:
        path = r.run_dir / "checkpoints" / f"{which}.ckpt"
        # Saved the Lightning way: plain values only, so even a weights-only load reads them.
        hparams = torch.load(path, weights_only=True)["hyper_parameters"]
        assert set(hparams) == {"optimizer_config", "scheduler_config", "epochs", "run_config"}
        # The network's sizes came from the data; the checkpoint keeps them.
        assert {"in_features", "out_features"} <= set(hparams["run_config"]["net_config"])
        module = SupervisedModule.load_from_checkpoint(path)
        assert type(module) is SupervisedModule
        net = load_run(r.run_dir, which)
        with torch.no_grad():
            assert torch.equal(module.net(X), net(X))
        assert type(module.criterion).__name__ == "MSELoss"
        assert module.optimizer_config == hparams["optimizer_config"]


def test_best_is_the_best_epoch_and_last_the_last(trained) -> None:
    (r,) = trained["alone"][0]
    for which, epoch in (("best", r.history.index(r.best)), ("last", len(r.history) - 1)):
        ckpt = torch.load(r.run_dir / "checkpoints" / f"{which}.ckpt", weights_only=False)
        assert ckpt["epoch"] == epoch
        state = load_run(r.run_dir, which).state_dict()
        assert {f"net.{k}" for k in state} == set(ckpt["state_dict"])
        for key, value in state.items():
            assert torch.equal(value, ckpt["state_dict"][f"net.{key}"])


def test_a_folder_without_checkpoints_is_a_clear_error(small_config, tmp_path: Path) -> None:
    cfg = small_config(checkpoint_config={"save_best": False, "save_last": True})
    (r,) = fit_run(cfg, cfg.seeds, seed_dirs(cfg, tmp_path))
    with pytest.raises(ConfigError, match=r"has no checkpoints/best.ckpt \(it has last.ckpt\)"):
        load_run(r.run_dir)
    load_run(r.run_dir, "last")

    (r.run_dir / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(ConfigError, match="no checkpoints at all"):
        load_run(r.run_dir, "last")
    with pytest.raises(ConfigError, match="is not a run folder"):
        load_run(tmp_path)
    with pytest.raises(ConfigError, match="expected 'best' or 'last'"):
        load_run(r.run_dir, "final")
