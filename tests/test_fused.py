"""Fused seeds: one Trainer trains every seed of a run, and each seed stays what it is alone.

The equivalence tests run the default task (the template's MLP and data, CPU) for a few
epochs, fused and seed after seed, and compare: initial weights and batch order exactly,
curves within 0.5 %. ``pytest -m slow`` runs the template's full 50 epochs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_hpo.builtin.data import SeedBatches, TensorBatches
from lightning_hpo.cli import EXIT_BAD_INPUT, train_main
from lightning_hpo.config.run import load_run_config
from lightning_hpo.errors import ConfigError
from lightning_hpo.fused.checks import blocker
from lightning_hpo.fused.stacking import optimizer_blocker, stack
from lightning_hpo.training.components import build_components, build_data, build_net
from lightning_hpo.training.runs import FitOptions, fit_run, seed_dirs, train

pytestmark = pytest.mark.usefixtures("quiet")

SEEDS = [89, 231, 928]  # the template's


def default_task(**overrides):
    """The template run config on the CPU: the default task."""
    cfg = load_run_config(
        Path(__file__).resolve().parents[1] / "configs" / "run_template.yaml", {"device": "cpu"}
    )
    return dataclasses.replace(cfg, **overrides)


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the TensorBoard run in ``run``: (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory, quiet):
    """The default task for 4 epochs, fused and seed after seed."""
    root = tmp_path_factory.mktemp("side_by_side")
    fused = train(default_task(epochs=4, fuse_seeds=True, project="fused"), root)
    alone = train(default_task(epochs=4, fuse_seeds=False, project="alone"), root)
    return fused, alone


# --------------------------------------------------------------------------- what is exact


def test_initial_weights_are_bit_identical_to_each_seed_alone() -> None:
    cfg = default_task()
    dm = build_data(cfg, SEEDS[0])
    stacked = stack([build_net(cfg, dm, seed) for seed in SEEDS], "bmm")
    for index, seed in enumerate(SEEDS):
        _, module = build_components(cfg, seed)  # what a seed trained alone starts from
        for name, param in module.net.named_parameters():
            assert torch.equal(stacked.get_parameter(name)[index], param), (seed, name)


def test_each_seed_draws_its_own_batches_in_its_own_order() -> None:
    x, y = torch.arange(50.0).reshape(50, 1), torch.arange(50.0).reshape(50, 1) * 2
    fused = SeedBatches((x, y), 8, SEEDS)
    alone = [TensorBatches((x, y), 8, shuffle=True, seed=seed) for seed in SEEDS]
    for _ in range(3):  # epochs: each a new permutation per seed
        together = list(fused)
        for index, loader in enumerate(alone):
            batches = list(loader)
            assert len(batches) == len(together) == 7
            for (xs, ys), (xa, ya) in zip(together, batches):
                assert torch.equal(xs[index], xa) and torch.equal(ys[index], ya)
    assert not torch.equal(
        together[0][0][0], together[0][0][1]
    )  # different seeds, different orders


# --------------------------------------------------------------------------- what is close


def test_fused_and_alone_reach_the_same_curves(side_by_side) -> None:
    fused, alone = side_by_side
    assert [r.seed for r in fused.results] == [r.seed for r in alone.results] == SEEDS
    for f, a in zip(fused.results, alone.results):
        assert len(f.history) == len(a.history) == 4
        assert f.history == pytest.approx(a.history, rel=5e-3), f.seed
    assert len({round(r.final, 6) for r in fused.results}) == 3  # three seeds, not one three times


def test_each_seeds_checkpoints_load_as_that_seed_alone(side_by_side) -> None:
    fused, alone = side_by_side
    cfg = default_task(epochs=4)
    for f, a in zip(fused.results, alone.results):
        for name in ("best.ckpt", "last.ckpt"):
            mine, theirs = (
                load_ckpt(f.run_dir / "checkpoints" / name),
                load_ckpt(a.run_dir / "checkpoints" / name),
            )
            assert mine["state_dict"].keys() == theirs["state_dict"].keys()
            for key, value in mine["state_dict"].items():
                assert value.shape == theirs["state_dict"][key].shape
                assert torch.allclose(value, theirs["state_dict"][key], rtol=1e-3, atol=1e-4), (
                    f.seed,
                    name,
                    key,
                )
            assert (mine["epoch"], mine["global_step"]) == (theirs["epoch"], theirs["global_step"])
            state, own = (
                mine["optimizer_states"][0]["state"],
                theirs["optimizer_states"][0]["state"],
            )
            assert {
                i: {k: getattr(v, "shape", None) for k, v in s.items()} for i, s in state.items()
            } == {i: {k: getattr(v, "shape", None) for k, v in s.items()} for i, s in own.items()}
            # The usual Lightning way back: a one-seed module, load_state_dict, strict.
            _, module = build_components(cfg, f.seed)
            module.load_state_dict(mine["state_dict"])
        best = load_ckpt(f.run_dir / "checkpoints" / "best.ckpt")
        assert best["callbacks"]["SeedCheckpoints"]["best"][f.seed] == pytest.approx(
            f.best, rel=1e-6
        )
        assert best["epoch"] == f.history.index(f.best)  # the best epoch's state, counted from 0


def test_tensorboard_shows_each_seed_as_alone_plus_their_mean(side_by_side) -> None:
    fused, alone = side_by_side
    means = tensorboard_scalars(fused.results[0].run_dir.parent / "mean")
    for f, a in zip(fused.results, alone.results):
        mine, theirs = tensorboard_scalars(f.run_dir), tensorboard_scalars(a.run_dir)
        assert {"train_loss", "val_loss", "val_r2", "lr"} <= set(mine)
        assert set(mine) == set(theirs)
        assert [step for step, _ in mine["val_loss"]] == [step for step, _ in theirs["val_loss"]]
        assert [v for _, v in mine["val_loss"]] == pytest.approx(f.history, rel=1e-6)
    per_epoch = zip(*(r.history for r in fused.results))
    assert [v for _, v in means["val_loss"]] == pytest.approx(
        [sum(vs) / 3 for vs in per_epoch], rel=1e-5
    )


# --------------------------------------------------------------------------- resume and early stopping


class StopBeforeEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("stopped by the test")


class CountEpochs(Callback):
    def __init__(self):
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)


def test_resume_continues_a_fused_run_from_its_last_epoch(tmp_path: Path, small_config) -> None:
    cfg = small_config(seeds=[1, 2, 3], epochs=5, fuse_seeds=True)
    whole = train(dataclasses.replace(cfg, project="whole"), tmp_path)
    dirs = seed_dirs(cfg, tmp_path)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        fit_run(cfg, cfg.seeds, dirs, FitOptions(callbacks=[StopBeforeEpoch(3)]))
    assert [load_ckpt(d / "checkpoints" / "last.ckpt")["epoch"] for d in dirs] == [2, 2, 2]

    counter = CountEpochs()
    resumed = fit_run(cfg, cfg.seeds, dirs, FitOptions(resume=True, callbacks=[counter]))
    assert counter.epochs == [3, 4]  # only what was left, not a fresh start
    for r, w in zip(resumed, whole.results):
        assert r.history == pytest.approx(w.history, rel=1e-5)
        assert len(r.history) == 5


def test_resume_of_a_seed_without_its_checkpoint_starts_that_seed_over_and_says_so(
    tmp_path: Path, small_config, capfd
) -> None:
    cfg = small_config(seeds=[1, 2, 3], epochs=5, fuse_seeds=True)
    whole = train(dataclasses.replace(cfg, project="whole"), tmp_path)
    dirs = seed_dirs(cfg, tmp_path)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        fit_run(cfg, cfg.seeds, dirs, FitOptions(callbacks=[StopBeforeEpoch(3)]))
    (dirs[1] / "checkpoints" / "last.ckpt").unlink()
    capfd.readouterr()

    counter = CountEpochs()
    resumed = fit_run(cfg, cfg.seeds, dirs, FitOptions(resume=True, callbacks=[counter]))
    assert counter.epochs == [3, 4]  # seeds 1 and 3 continued where they were
    assert "seed 2 starts over: it has no checkpoints/last.ckpt" in capfd.readouterr().err
    for r, w in zip(resumed, whole.results):
        assert r.history == pytest.approx(w.history, rel=1e-5)
    assert [load_ckpt(d / "checkpoints" / "last.ckpt")["epoch"] for d in dirs] == [4, 4, 4]


def test_resume_after_a_kill_between_the_seeds_writes_continues_each_seed_from_its_own_step(
    tmp_path: Path, small_config, capfd
) -> None:
    cfg = small_config(seeds=[1, 2, 3], epochs=5, fuse_seeds=True)
    whole = train(dataclasses.replace(cfg, project="whole"), tmp_path)
    dirs = seed_dirs(cfg, tmp_path)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        fit_run(cfg, cfg.seeds, dirs, FitOptions(callbacks=[StopBeforeEpoch(2)]))
    behind = (dirs[2] / "checkpoints" / "last.ckpt").read_bytes()  # seed 3 after epoch 1
    with pytest.raises(RuntimeError, match="stopped by the test"):
        fit_run(cfg, cfg.seeds, dirs, FitOptions(resume=True, callbacks=[StopBeforeEpoch(3)]))
    # Killed after seeds 1 and 2 wrote epoch 2's checkpoint, before seed 3 did.
    (dirs[2] / "checkpoints" / "last.ckpt").write_bytes(behind)
    capfd.readouterr()

    counter = CountEpochs()
    resumed = fit_run(cfg, cfg.seeds, dirs, FitOptions(resume=True, callbacks=[counter]))
    assert counter.epochs == [3, 4]
    assert "starts over" not in capfd.readouterr().err
    for r, w in zip(resumed, whole.results):
        assert r.history == pytest.approx(w.history, rel=1e-5)
        assert len(r.history) == 5


def test_resume_never_touches_a_finished_seed(tmp_path: Path, small_config) -> None:
    cfg = small_config(seeds=[1, 2, 3], epochs=3, fuse_seeds=True)
    train(cfg, tmp_path)
    dirs = seed_dirs(cfg, tmp_path)
    for d in dirs[1:]:
        (d / "result.json").unlink()  # seeds 2 and 3 unfinished, seed 1 finished
    (dirs[1] / "checkpoints" / "last.ckpt").unlink()
    before = {p: p.read_bytes() for p in dirs[0].rglob("*") if p.is_file()}
    result = train(cfg, tmp_path, resume=True)
    assert {p: p.read_bytes() for p in dirs[0].rglob("*") if p.is_file()} == before
    assert [len(r.history) for r in result.results] == [3, 3, 3]


def test_each_seed_stops_early_on_its_own_and_keeps_its_weights(
    tmp_path: Path, small_config
) -> None:
    stopping = {"enabled": True, "patience": 1, "min_delta": 0.0}
    cfg = small_config(
        seeds=[1, 2, 3, 4], epochs=12, early_stopping_config=stopping, optimizer_config={"lr": 0.01}
    )
    fused = train(dataclasses.replace(cfg, fuse_seeds=True, project="fused"), tmp_path)
    alone = train(dataclasses.replace(cfg, fuse_seeds=False, project="alone"), tmp_path)
    lengths = [len(r.history) for r in alone.results]
    assert [len(r.history) for r in fused.results] == lengths
    assert len(set(lengths)) > 1 and min(lengths) < 12  # the seeds stopped at different epochs
    for f, a in zip(fused.results, alone.results):
        assert f.history == pytest.approx(a.history, rel=5e-3)
        last_f, last_a = (
            load_ckpt(f.run_dir / "checkpoints" / "last.ckpt"),
            load_ckpt(a.run_dir / "checkpoints" / "last.ckpt"),
        )
        # A seed that stopped kept its weights while the others trained on.
        for key, value in last_f["state_dict"].items():
            assert torch.allclose(value, last_a["state_dict"][key], rtol=1e-3, atol=1e-4), (
                f.seed,
                key,
            )


def test_a_network_beyond_linear_layers_fuses_through_vmap(
    tmp_path: Path, small_config, user_components, capfd
) -> None:
    cfg = small_config(
        seeds=[1, 2, 3],
        epochs=3,
        net="user_components.LayerNormNet",
        net_config={},
        data="user_components.three_to_two",
        data_config={},
    )
    dm = build_data(cfg, 1)
    assert blocker(
        dm, [build_net(cfg, dm, s) for s in cfg.seeds], torch.optim.AdamW, {"lr": 1e-3}, 1
    ) == ("vmap", None)
    fused = train(dataclasses.replace(cfg, fuse_seeds=True, project="fused"), tmp_path)
    alone = train(dataclasses.replace(cfg, fuse_seeds=False, project="alone"), tmp_path)
    assert "not fused" not in capfd.readouterr().err
    for f, a in zip(fused.results, alone.results):
        assert f.history == pytest.approx(a.history, rel=1e-4)


def test_non_tensor_datasets_fuse_with_each_seeds_own_dataloader(
    tmp_path: Path, small_config, user_components
) -> None:
    cfg = small_config(
        seeds=[1, 2],
        epochs=3,
        data="user_components.plain_datasets",
        data_config={"n": 80},
        batch_size=16,
    )
    fused = train(dataclasses.replace(cfg, fuse_seeds=True, project="fused"), tmp_path)
    alone = train(dataclasses.replace(cfg, fuse_seeds=False, project="alone"), tmp_path)
    assert [r.together for r in fused.results] == [2, 2]
    for f, a in zip(fused.results, alone.results):
        assert len(f.history) == len(a.history) == 3
        assert f.history == pytest.approx(a.history, rel=1e-4)


# --------------------------------------------------------------------------- what cannot be fused


@pytest.mark.parametrize("net", ["BatchNormNet", "BranchyNet"])
def test_a_network_that_cannot_be_vectorised_trains_seed_after_seed(
    net, tmp_path: Path, small_config, user_components, capfd
) -> None:
    cfg = small_config(
        seeds=[1, 2],
        net=f"user_components.{net}",
        net_config={},
        data="user_components.three_to_two",
        data_config={},
    )
    result = train(cfg, tmp_path)
    assert "seeds train one after another, not fused" in capfd.readouterr().err
    alone = train(dataclasses.replace(cfg, fuse_seeds=False, project="alone"), tmp_path)
    assert [r.history for r in result.results] == [r.history for r in alone.results]

    with pytest.raises(ConfigError, match="fuse_seeds"):
        train(dataclasses.replace(cfg, fuse_seeds=True, project="forced"), tmp_path)
    assert not (tmp_path / "forced").exists()


def test_fuse_seeds_true_on_a_run_that_cannot_fuse_is_a_config_error(
    write_config, tmp_path: Path, user_components, capsys
) -> None:
    path = write_config(
        seeds=[1, 2], net="user_components.BatchNormNet", net_config={}, fuse_seeds=True
    )
    code = train_main(["--config", str(path), "--output", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert (
        err.count("\n") == 1 and "fuse_seeds" in err and "buffers" in err and "Traceback" not in err
    )
    assert not (tmp_path / "runs").exists()


def test_a_lightning_datamodule_trains_seed_after_seed() -> None:
    from lightning.pytorch.demos.boring_classes import BoringDataModule

    mode, reason = blocker(BoringDataModule(), [], torch.optim.SGD, {"lr": 0.1}, 1)
    assert mode is None and "LightningDataModule" in reason


@pytest.mark.parametrize(
    "optimizer, config",
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
        (torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}),
        (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
        (torch.optim.RMSprop, {"lr": 1e-2, "momentum": 0.5, "centered": True}),
        (torch.optim.Adagrad, {"lr": 1e-1}),
        (torch.optim.NAdam, {"lr": 1e-2}),
    ],
)
def test_element_wise_optimizers_update_stacked_seeds_as_alone(optimizer, config) -> None:
    assert optimizer_blocker(optimizer, config, [torch.Size([8, 3]), torch.Size([8])]) is None


def test_optimizers_that_couple_elements_are_refused(user_components) -> None:
    shapes = [torch.Size([8, 3]), torch.Size([8])]
    assert "not element-wise" in optimizer_blocker(torch.optim.LBFGS, {"lr": 0.5}, shapes)
    assert "not element-wise" in optimizer_blocker(
        user_components.TrustRatioSGD, {"lr": 0.1}, shapes
    )


# --------------------------------------------------------------------------- the full default task


@pytest.mark.slow
def test_the_default_task_fused_matches_each_seed_alone(tmp_path: Path) -> None:
    fused = train(default_task(fuse_seeds=True, project="fused"), tmp_path)
    alone = train(default_task(fuse_seeds=False, project="alone"), tmp_path)
    for f, a in zip(fused.results, alone.results):
        assert len(f.history) == len(a.history) == 50
        assert f.final == pytest.approx(a.final, rel=5e-3), f.seed


def test_tune_refuses_fuse_seeds_true_before_the_study_opens(
    write_config, tmp_path: Path, user_components, capsys
) -> None:
    from lightning_hpo.cli import tune_main
    from lightning_hpo.config.yamlio import dump_yaml

    run = write_config(
        seeds=[1, 2], net="user_components.BatchNormNet", net_config={}, fuse_seeds=True
    )
    opt = tmp_path / "optimize.yaml"
    dump_yaml(
        {
            "study_name": "s",
            "trials": 2,
            "pruner": None,
            "search_space": {
                "optimizer_config": {
                    "lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-2, "log": True}
                }
            },
        },
        opt,
    )
    code = tune_main(
        [
            "--run-config",
            str(run),
            "--optimize-config",
            str(opt),
            "--storage",
            f"sqlite:///{tmp_path}/s.db",
            "--output",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "fuse_seeds" in err and err.count("\n") == 1
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "runs").exists()
