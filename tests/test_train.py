"""Training: shapes, data, the run folder, TensorBoard logs, the command line, and --resume.

Every run here is a small CPU config from conftest.py (400 samples, batch 64: 5
training steps per epoch), so each takes well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import signal
import statistics
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

import lightning_hpo.training.runs as training
from lightning_hpo.builtin.data import (
    SeedBatches,
    SupervisedData,
    TensorBatches,
    build_datamodule,
    feature_sizes,
    synthetic_regression,
)
from lightning_hpo.builtin.mlp import MLP
from lightning_hpo.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, train_main
from lightning_hpo.cli.common import EXIT_RUN_FAILED
from lightning_hpo.config.run import load_run_config
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.components import build_module
from lightning_hpo.training.results import (
    RESULT_FILE,
    SeedResult,
    TrainResult,
    load_result,
)
from lightning_hpo.training.runs import FitOptions, fit_seed, seed_dirs, train

pytestmark = pytest.mark.usefixtures("quiet")

STEPS_PER_EPOCH = 5  # 320 training samples of conftest's n=400, in batches of 64


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_result(run_dir: Path) -> dict:
    return json.loads((run_dir / RESULT_FILE).read_text())


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def linear_shapes(state_dict: dict) -> list[tuple[int, ...]]:
    """Weight shapes of the network's Linear layers, in order."""
    return [
        tuple(v.shape)
        for k, v in state_dict.items()
        if k.startswith("net.") and k.endswith("weight") and v.ndim == 2
    ]


# --------------------------------------------------------------------------- data


def test_synthetic_regression_is_an_8000_2000_split_of_1d_x_and_y() -> None:
    train_set, val_set = synthetic_regression()
    assert isinstance(train_set, TensorDataset) and isinstance(val_set, TensorDataset)
    (x, y), (xv, yv) = train_set.tensors, val_set.tensors
    assert x.shape == y.shape == (8000, 1)
    assert xv.shape == yv.shape == (2000, 1)
    assert x.dtype == y.dtype == torch.float32
    assert 0 <= float(torch.cat([x, xv]).min()) and float(torch.cat([x, xv]).max()) < 1
    # The split is a partition of the 10 000 drawn samples: none lost, none in both.
    drawn = torch.rand(10_000, 1, generator=torch.Generator().manual_seed(42))
    assert torch.equal(torch.cat([x, xv]).flatten().sort().values, drawn.flatten().sort().values)


def test_synthetic_regression_is_deterministic_and_seeded() -> None:
    first, again = synthetic_regression(), synthetic_regression()
    for a, b in zip(first, again):
        for ta, tb in zip(a.tensors, b.tensors):
            assert torch.equal(ta, tb)
    other = synthetic_regression(seed=43)
    assert not torch.equal(first[0].tensors[0], other[0].tensors[0])


def test_synthetic_regression_honours_size_and_val_fraction() -> None:
    train_set, val_set = synthetic_regression(n=100, val_fraction=0.3)
    assert (len(train_set), len(val_set)) == (70, 30)


def _epoch(batches: TensorBatches) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    items = list(batches)
    sizes = [len(b[0]) for b in items]
    return sizes, torch.cat([b[0] for b in items]), torch.cat([b[1] for b in items])


def test_tensor_batches_shuffle_covers_every_sample_once_per_epoch() -> None:
    x = torch.arange(103)
    batches = TensorBatches((x, 10 * x), batch_size=25, shuffle=True, seed=0)
    assert len(batches) == 5
    orders = []
    for _ in range(3):
        sizes, xs, ys = _epoch(batches)
        assert sizes == [25, 25, 25, 25, 3]  # the last batch is partial, not dropped
        assert torch.equal(xs.sort().values, x)  # a permutation: every sample exactly once
        assert torch.equal(ys, 10 * xs)  # x and y stay paired
        orders.append(xs)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert not torch.equal(orders[0], x)
    # The same seed replays the same sequence of epochs; another seed does not.
    replay = TensorBatches((x, 10 * x), batch_size=25, shuffle=True, seed=0)
    assert all(torch.equal(_epoch(replay)[1], order) for order in orders)
    other = TensorBatches((x, 10 * x), batch_size=25, shuffle=True, seed=1)
    assert not torch.equal(_epoch(other)[1], orders[0])


def test_tensor_batches_without_shuffle_keep_the_order() -> None:
    x = torch.arange(10)
    sizes, xs, _ = _epoch(TensorBatches((x, x), batch_size=4, shuffle=False))
    assert sizes == [4, 4, 2]
    assert torch.equal(xs, x)


def test_tensor_batches_ranks_split_the_training_data() -> None:
    x = torch.arange(11)
    parts = [
        TensorBatches((x, x), batch_size=4, shuffle=True, seed=3, rank=r, world_size=2)
        for r in (0, 1)
    ]
    assert [len(p) for p in parts] == [2, 2]
    seen = [_epoch(p)[1] for p in parts]
    # 11 samples padded to 12 as DistributedSampler pads: each rank takes 6, every sample is
    # served, and the one served twice is the epoch's first. (Validation, unshuffled, is
    # not padded: tests/test_ddp_validation.py.)
    assert [len(s) for s in seen] == [6, 6]
    assert set(torch.cat(seen).tolist()) == set(x.tolist())
    assert seen[1][-1] == seen[0][0]


@pytest.mark.parametrize("fused", [False, True])
def test_ranks_take_as_many_batches_when_the_samples_do_not_divide(fused: bool) -> None:
    # 513 samples in batches of 256 on 2 ranks: unpadded, rank 0 took 2 batches and rank 1
    # one, and rank 0's second backward waited for an all-reduce that never came.
    x = torch.arange(513.0).unsqueeze(1)
    for world in (2, 3, 4):
        parts = [
            SeedBatches((x, x), 256, [1, 2], rank=r, world_size=world)
            if fused
            else TensorBatches((x, x), 256, shuffle=True, seed=1, rank=r, world_size=world)
            for r in range(world)
        ]
        batches = [len(list(iter(p))) for p in parts]
        assert batches == [len(parts[0])] * world, (world, batches)
        sizes = {tuple(b[0].shape) for p in parts for b in list(iter(p))[-1:]}
        assert len(sizes) == 1  # the last batches are alike too


def test_tensor_datasets_are_served_from_memory_and_other_datasets_by_a_dataloader(
    user_components,
) -> None:
    dm = SupervisedData(*user_components.three_to_two(), batch_size=16)
    assert isinstance(dm.train_dataloader(), TensorBatches)
    assert isinstance(dm.val_dataloader(), TensorBatches)
    dm = SupervisedData(*user_components.plain_datasets(), batch_size=16)
    loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader)
    x, y = next(iter(loader))
    assert x.shape == (16, 3) and y.shape == (16, 2)
    assert isinstance(dm.val_dataloader(), DataLoader)
    assert feature_sizes(dm) == (3, 2)


def test_feature_sizes_of_integer_labels_count_the_classes() -> None:
    x, labels = torch.randn(20, 5), torch.arange(20) % 4
    dm = SupervisedData(TensorDataset(x, labels), TensorDataset(x, labels), batch_size=20)
    assert feature_sizes(dm) == (5, 4)


def test_a_data_factory_must_return_a_pair() -> None:
    with pytest.raises(TypeError, match=r"must return \(train_dataset, val_dataset\)"):
        build_datamodule(lambda: TensorDataset(torch.zeros(2, 1)), {}, batch_size=2, seed=0)


# --------------------------------------------------------------------------- the network


def test_mlp_has_the_requested_layers() -> None:
    net = MLP(3, 2, nodes=5, layers=3, activation="ReLU")
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 5), (5, 5), (5, 5), (5, 2)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.modules()) == 3
    assert net(torch.randn(7, 3)).shape == (7, 2)


@pytest.mark.parametrize(
    "kwargs", [{"nodes": 0}, {"layers": 0}, {"activation": "NoSuchActivation"}]
)
def test_mlp_rejects_bad_settings(kwargs) -> None:
    with pytest.raises(ValueError):
        MLP(1, 1, **kwargs)


def test_mlp_is_sized_from_the_data(small_config) -> None:
    cfg = small_config()
    dm = build_datamodule(cfg.components.data, cfg.data_config, cfg.batch_size, seed=1)
    module = build_module(cfg, dm)
    assert linear_shapes(module.state_dict()) == [(8, 1), (1, 8)]


def test_user_data_function_trains_an_mlp_sized_3_to_2(
    user_components, small_config, tmp_path
) -> None:
    cfg = small_config(data="user_components.three_to_two", data_config={"n": 200})
    result = train(cfg, tmp_path)
    run_dir = result.results[0].run_dir
    assert len(read_result(run_dir)["history"]) == cfg.epochs
    state = load_ckpt(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert linear_shapes(state) == [(8, 3), (2, 8)]


def test_user_net_named_only_in_yaml_trains(
    user_components, write_config, tmp_path, capsys
) -> None:
    path = write_config(net="user_components.TinyNet", net_config={"hidden": 5})
    cfg = load_run_config(path)
    assert train_main(["--config", str(path), "--output", str(tmp_path / "runs")]) == 0
    assert "after 2 epochs" in capsys.readouterr().out
    run_dir = seed_dirs(cfg, tmp_path / "runs")[0]
    assert run_dir.parent.name.startswith("TinyNet_h5_")
    state = load_ckpt(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert [k for k in state if k.endswith("weight")] == ["net.body.0.weight", "net.body.2.weight"]
    assert linear_shapes(state) == [(5, 1), (1, 5)]


def test_non_tensor_datasets_train_through_a_dataloader(
    user_components, small_config, tmp_path
) -> None:
    cfg = small_config(data="user_components.plain_datasets", data_config={"n": 80}, batch_size=16)
    result = train(cfg, tmp_path)
    history = result.results[0].history
    assert len(history) == cfg.epochs and all(math.isfinite(v) for v in history)
    state = load_ckpt(result.results[0].run_dir / "checkpoints" / "last.ckpt")
    assert linear_shapes(state["state_dict"]) == [(8, 3), (2, 8)]
    assert state["global_step"] == cfg.epochs * 4  # 60 training samples in batches of 16


# --------------------------------------------------------------------------- a short run: files and TensorBoard


@pytest.fixture(scope="module")
def short_run(small_config, tmp_path_factory, quiet):
    """epochs=3, seeds=[1, 2], trained once for the tests below."""
    cfg = small_config(epochs=3, seeds=[1, 2])
    root = tmp_path_factory.mktemp("short_run")
    return cfg, root, train(cfg, root)


def test_short_run_writes_one_folder_per_seed(short_run) -> None:
    cfg, root, result = short_run
    assert [r.seed for r in result.results] == [1, 2]
    for seed, r in zip(cfg.seeds, result.results):
        run_dir = root / "Test" / cfg.group_name() / str(seed)
        assert r.run_dir == run_dir
        assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("events.")) == [
            "checkpoints",
            "config.yaml",
            "hparams.yaml",
            "provenance.yaml",
            "result.json",
        ]
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
            "best.ckpt",
            "last.ckpt",
        ]


def test_short_run_config_yaml_reloads_as_the_seeds_config(short_run) -> None:
    cfg, _, result = short_run
    for r in result.results:
        saved = load_run_config(r.run_dir / "config.yaml")
        assert saved.seeds == [r.seed]
        assert saved == dataclasses.replace(cfg, seeds=[r.seed])


def test_short_run_result_json_has_one_value_per_epoch(short_run) -> None:
    cfg, _, result = short_run
    for r in result.results:
        data = read_result(r.run_dir)
        assert data["seed"] == r.seed and data["mode"] == "min" and data["seconds"] > 0
        assert len(data["history"]) == 3 and all(math.isfinite(v) for v in data["history"])
        assert data["history"] == r.history
    assert result.mean == pytest.approx(statistics.fmean(r.history[-1] for r in result.results))
    assert result.std == pytest.approx(statistics.stdev(r.history[-1] for r in result.results))
    # Different seeds, different runs.
    assert result.results[0].history != result.results[1].history


def recorded_best(ckpt: dict, seed: int) -> float:
    """The best score a checkpoint records: ModelCheckpoint's (a seed alone) or SeedCheckpoints' (fused)."""
    if "SeedCheckpoints" in ckpt["callbacks"]:
        return ckpt["callbacks"]["SeedCheckpoints"]["best"][seed]
    (state,) = [s for s in ckpt["callbacks"].values() if "best_model_score" in s]
    return float(state["best_model_score"])


@pytest.mark.parametrize("fuse_seeds", [True, False])
def test_checkpoints_hold_the_last_and_the_best_epoch(fuse_seeds, small_config, tmp_path) -> None:
    result = train(small_config(epochs=3, seeds=[1, 2], fuse_seeds=fuse_seeds), tmp_path)
    for r in result.results:
        last = load_ckpt(r.run_dir / "checkpoints" / "last.ckpt")
        assert (
            last["epoch"] == 2 and last["global_step"] == 3 * STEPS_PER_EPOCH
        )  # epoch counts from 0
        best = load_ckpt(r.run_dir / "checkpoints" / "best.ckpt")
        assert recorded_best(best, r.seed) == pytest.approx(min(r.history))
        assert best["epoch"] == r.history.index(min(r.history))


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_has_one_scalar_per_epoch(short_run) -> None:
    _, _, result = short_run
    for r in result.results:
        events = _events(r.run_dir)
        assert {"train_loss", "val_loss", "val_r2", "lr"} <= set(events.Tags()["scalars"])
        for tag in ("train_loss", "val_loss", "val_r2", "lr"):
            points = events.Scalars(tag)
            assert len(points) == 3, tag
            assert len({p.step for p in points}) == 3, tag
        assert [p.value for p in events.Scalars("val_loss")] == pytest.approx(r.history, rel=1e-6)
        assert all(p.value > 0 for p in events.Scalars("lr"))


def test_tensorboard_hparams_have_the_config_and_the_final_metrics(short_run) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg, _, result = short_run
    for r in result.results:
        events = _events(r.run_dir)
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]
        ).session_start_info
        hparams = dict(start.hparams)
        assert hparams["net_config.nodes"].number_value == 8
        assert hparams["net_config.layers"].number_value == 1
        assert hparams["net_config.activation"].string_value == "GELU"
        assert hparams["optimizer_config.lr"].number_value == pytest.approx(5e-3)
        assert hparams["optimizer"].string_value == "torch.optim.AdamW"
        assert hparams["epochs"].number_value == 3
        assert hparams["seed"].number_value == r.seed
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/experiment"]
        ).experiment
        assert {m.name.tag for m in experiment.metric_infos} == {"final_val_loss", "best_val_loss"}
        scalars = events.Tags()["scalars"]
        assert "final_val_loss" in scalars and "best_val_loss" in scalars
        assert events.Scalars("final_val_loss")[-1].value == pytest.approx(r.history[-1], rel=1e-6)
        assert events.Scalars("best_val_loss")[-1].value == pytest.approx(min(r.history), rel=1e-6)


def test_tensorboard_lr_is_the_rate_each_epoch_trained_with(short_run) -> None:
    cfg, _, result = short_run
    lrs = [p.value for p in _events(result.results[0].run_dir).Scalars("lr")]
    assert lrs[0] == pytest.approx(cfg.optimizer_config["lr"])


def test_constant_lr_is_logged_every_epoch(small_config, tmp_path) -> None:
    cfg = small_config(scheduler=None, optimizer_config={"lr": 2e-3})
    result = train(cfg, tmp_path)
    assert [p.value for p in _events(result.results[0].run_dir).Scalars("lr")] == pytest.approx(
        [2e-3] * cfg.epochs
    )


# --------------------------------------------------------------------------- the command line


SEED_LINE = re.compile(
    r"^seed (\d+): final val_loss (\S+) \(best (\S+)\) after (\d+) epochs, \d+\.\d s(?: for (\d+) seeds together)?$"
)


def test_train_py_reports_each_seed_and_the_mean_then_refuses_to_overwrite(
    write_config, tmp_path, capsys
) -> None:
    path = write_config(seeds=[1, 2])
    output = tmp_path / "runs"
    argv = ["--config", str(path), "--output", str(output)]
    assert train_main(argv) == 0
    preflight, *lines = capsys.readouterr().out.splitlines()
    assert preflight.startswith("preflight passed: 1 config(s) built and trained for one batch")
    cfg = load_run_config(path)
    dirs = seed_dirs(cfg, output)
    histories = [read_result(d)["history"] for d in dirs]
    for line, seed, history in zip(lines[:2], [1, 2], histories):
        match = SEED_LINE.match(line)
        assert match, line
        assert match.groups() == (
            str(seed),
            f"{history[-1]:.5g}",
            f"{min(history):.5g}",
            "2",
            "2",
        )  # fused: 2 together
    finals = [h[-1] for h in histories]
    assert (
        lines[2]
        == f"final val_loss over 2 seed(s): {statistics.fmean(finals):.5g} ± {statistics.stdev(finals):.2g}"
    )
    assert lines[3] == f"runs and checkpoints: {dirs[0].parent}"
    assert lines[4].startswith("TensorBoard: tensorboard --logdir ")
    assert len(lines) == 5

    # Again without --resume: refused on one line, nothing touched.
    before = snapshot(output)
    assert train_main(argv) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert (
        str(dirs[0]) in captured.err
        and "already exists" in captured.err
        and "--resume" in captured.err
    )
    assert snapshot(output) == before

    # With --resume a finished run is read back, not trained again.
    assert train_main([*argv, "--resume"]) == 0
    assert capsys.readouterr().out.splitlines()[1:4] == lines[:3]  # after the preflight line
    assert snapshot(output) == before


def test_train_refuses_an_existing_run_folder(small_config, tmp_path) -> None:
    cfg = small_config(seeds=[1, 2])
    existing = seed_dirs(cfg, tmp_path)[1]
    existing.mkdir(parents=True)
    with pytest.raises(ConfigError, match="already exists") as info:
        train(cfg, tmp_path)
    assert info.value.source == str(existing)
    assert not seed_dirs(cfg, tmp_path)[0].exists()  # refused before the first seed trained


@pytest.mark.parametrize("fuse_seeds", [True, False])
def test_a_run_that_never_validated_fails_on_one_line_and_records_no_result(
    fuse_seeds, write_config, tmp_path, capsys, monkeypatch
) -> None:
    # Validation every 5th epoch of a 2-epoch run: no epoch records val_loss. The config
    # check refuses that (test_config's corpus); without it, the run itself must fail.
    import lightning_hpo.config.run as run_config

    monkeypatch.setattr(run_config, "check_validates", lambda *_args: None)
    path = write_config(
        seeds=[1, 2], fuse_seeds=fuse_seeds, trainer_config={"check_val_every_n_epoch": 5}
    )
    output = tmp_path / "runs"
    argv = ["--config", str(path), "--output", str(output)]
    assert train_main(argv) == EXIT_RUN_FAILED
    captured = capsys.readouterr()
    dirs = seed_dirs(load_run_config(path), output)
    [line] = captured.err.splitlines()
    assert line.startswith(f"error: {dirs[0]}: val_loss was recorded in none of the 2 epoch(s)")
    assert "check_val_every_n_epoch" in line and "Traceback" not in captured.err
    assert "final val_loss over" not in captured.out
    assert not any((d / RESULT_FILE).exists() for d in dirs)
    # --resume does not read the run as finished: it fails the same way.
    assert train_main([*argv, "--resume"]) == EXIT_RUN_FAILED
    assert "was recorded in none" in capsys.readouterr().err
    assert not any((d / RESULT_FILE).exists() for d in dirs)


def test_a_result_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    import lightning_hpo.training.files as files

    def killed(*_args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        SeedResult(1, tmp_path, [0.5, 0.25]).save()
    assert load_result(tmp_path) is None  # no half-written file a retry would read


def test_a_result_file_without_history_is_not_a_finished_seed(tmp_path) -> None:
    # As earlier versions wrote them for a run that never validated.
    (tmp_path / RESULT_FILE).write_text(
        json.dumps({"seed": 1, "history": [], "mode": "min", "seconds": 0.5, "together": 2})
    )
    assert load_result(tmp_path) is None
    SeedResult(1, tmp_path, [0.5, 0.25]).save()
    assert load_result(tmp_path).history == [0.5, 0.25]


def test_the_spread_over_seeds_with_a_diverged_seed_is_nan() -> None:
    # statistics.stdev raises on nan: train.py's last line must still print.
    result = TrainResult(
        [SeedResult(1, Path("a"), [0.5, math.nan]), SeedResult(2, Path("b"), [0.4])]
    )
    assert math.isnan(result.mean) and math.isnan(result.std)
    assert TrainResult([SeedResult(1, Path("a"), [0.5]), SeedResult(2, Path("b"), [0.25])]).std > 0


# --------------------------------------------------------------------------- resume


class StopBeforeEpoch(Callback):
    """Raise ``exc`` when epoch ``epoch`` (counted from 0) starts: ``epoch`` epochs are done."""

    def __init__(self, epoch: int, exc: type[BaseException] = RuntimeError):
        self.epoch, self.exc = epoch, exc

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise self.exc("stopped by the test")


class CountEpochs(Callback):
    """The epochs (counted from 0) a Trainer actually trained, in order."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)


def count_epochs_of_each_seed(patch: pytest.MonkeyPatch) -> dict[int, CountEpochs]:
    """Give every ``fit_seed`` that ``train`` (and so train.py) calls a CountEpochs: seed -> counter."""
    real = training.fit_seed
    counters: dict[int, CountEpochs] = {}

    def fit_seed_counting(cfg, seed, run_dir, options=None, dm=None):
        options = options or FitOptions()
        counters[seed] = CountEpochs()
        options = dataclasses.replace(options, callbacks=[*options.callbacks, counters[seed]])
        return real(cfg, seed, run_dir, options, dm)

    patch.setattr(training, "fit_seed", fit_seed_counting)
    return counters


@pytest.fixture(scope="module")
def resumed_run(small_config, tmp_path_factory, quiet):
    """epochs=6, stopped after epoch 3, then ``train(..., resume=True)``, counting the epochs
    it trains; and the same run uninterrupted, to compare with."""
    cfg = small_config(epochs=6)
    root = tmp_path_factory.mktemp("resumed_run")
    whole = train(dataclasses.replace(cfg, project="Whole"), root)
    run_dir = seed_dirs(cfg, root)[0]
    with pytest.raises(RuntimeError, match="stopped by the test"):
        fit_seed(cfg, cfg.seeds[0], run_dir, FitOptions(callbacks=[StopBeforeEpoch(3)]))
    interrupted = {
        "result_json": (run_dir / RESULT_FILE).exists(),
        "last": load_ckpt(run_dir / "checkpoints" / "last.ckpt"),
    }
    with pytest.MonkeyPatch.context() as patch:
        counters = count_epochs_of_each_seed(patch)
        result = train(cfg, root, resume=True)
    return cfg, run_dir, interrupted, result, counters, whole


def test_an_interrupted_run_leaves_a_last_checkpoint_and_no_result(resumed_run) -> None:
    _, _, interrupted, *_ = resumed_run
    assert interrupted["result_json"] is False
    assert interrupted["last"]["epoch"] == 2  # the third epoch, counted from 0
    assert interrupted["last"]["global_step"] == 3 * STEPS_PER_EPOCH


def test_resume_trains_only_the_missing_epochs(resumed_run) -> None:
    cfg, run_dir, _, result, counters, _ = resumed_run
    # Epochs 0-2 were done: the resumed Trainer ran 3-5, not a fresh start from 0.
    assert {seed: c.epochs for seed, c in counters.items()} == {cfg.seeds[0]: [3, 4, 5]}
    assert (run_dir / RESULT_FILE).exists()
    last = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert last["epoch"] == cfg.epochs - 1  # the sixth epoch, counted from 0
    assert last["global_step"] == cfg.epochs * STEPS_PER_EPOCH


def test_resume_ends_where_the_uninterrupted_run_does(resumed_run) -> None:
    # Weights, optimizer, scheduler and each epoch's batch order (data._Shuffle) continue
    # exactly, so the resumed curve is the uninterrupted one, value for value.
    cfg, run_dir, _, result, _, whole = resumed_run
    history = result.results[0].history
    assert len(history) == cfg.epochs
    assert history == whole.results[0].history
    assert read_result(run_dir)["history"] == history
    resumed_state = load_ckpt(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    whole_state = load_ckpt(whole.results[0].run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    for key, value in whole_state.items():
        assert torch.equal(resumed_state[key], value), key


def test_resume_of_seeds_trained_one_after_another_trains_only_what_is_missing(
    small_config, tmp_path
) -> None:
    # Seed 1 finished, seed 2 stopped after 2 of its 4 epochs: --resume reads seed 1 back and
    # trains seed 2's last two epochs.
    cfg = small_config(epochs=4, seeds=[1, 2], fuse_seeds=False)
    whole = train(dataclasses.replace(cfg, project="Whole"), tmp_path)
    dirs = seed_dirs(cfg, tmp_path)
    training.fit_run(cfg, cfg.seeds[:1], dirs[:1])
    with pytest.raises(RuntimeError, match="stopped by the test"):
        fit_seed(cfg, 2, dirs[1], FitOptions(callbacks=[StopBeforeEpoch(2)]))
    finished = snapshot(dirs[0])
    with pytest.MonkeyPatch.context() as patch:
        counters = count_epochs_of_each_seed(patch)
        resumed = train(cfg, tmp_path, resume=True)
    assert {seed: c.epochs for seed, c in counters.items()} == {2: [2, 3]}
    assert snapshot(dirs[0]) == finished
    assert [r.history for r in resumed.results] == [w.history for w in whole.results]


def _ctrl_c_after_one_epoch(monkeypatch) -> None:
    """Make train.py's runs raise KeyboardInterrupt as epoch 2 starts, as Ctrl+C would."""
    real = training.fit_seed

    def fit_seed_with_ctrl_c(cfg, seed, run_dir, options=None, dm=None):
        options = options or FitOptions()
        stop = StopBeforeEpoch(1, KeyboardInterrupt)
        options = dataclasses.replace(options, callbacks=[*options.callbacks, stop])
        return real(cfg, seed, run_dir, options, dm)

    monkeypatch.setattr(training, "fit_seed", fit_seed_with_ctrl_c)


def _train_main_catching_exit(argv: list[str]) -> int:
    handler = signal.getsignal(signal.SIGINT)
    try:
        return train_main(argv)
    except SystemExit as exc:  # Lightning turns KeyboardInterrupt into sys.exit(1)
        return exc.code
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt


def test_a_run_interrupted_by_ctrl_c_resumes_with_resume(
    write_config, tmp_path, monkeypatch, capsys
) -> None:
    path = write_config(epochs=3)
    argv = ["--config", str(path), "--output", str(tmp_path / "runs")]
    with monkeypatch.context() as patch:
        _ctrl_c_after_one_epoch(patch)
        assert _train_main_catching_exit(argv) != 0
    run_dir = seed_dirs(load_run_config(path), tmp_path / "runs")[0]
    assert not (run_dir / RESULT_FILE).exists()
    assert load_ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH
    capsys.readouterr()
    assert train_main(argv) == EXIT_BAD_INPUT  # not without --resume
    with monkeypatch.context() as patch:
        counters = count_epochs_of_each_seed(patch)
        assert train_main([*argv, "--resume"]) == 0
    assert {seed: c.epochs for seed, c in counters.items()} == {1: [1, 2]}  # epoch 0 was done
    assert load_ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH
    assert (run_dir / RESULT_FILE).exists()
    # The same command never interrupted: the same curve.
    whole = tmp_path / "whole"
    assert train_main(["--config", str(path), "--output", str(whole)]) == 0
    assert (
        read_result(run_dir)["history"]
        == read_result(seed_dirs(load_run_config(path), whole)[0])["history"]
    )


def test_ctrl_c_exits_130_with_a_message(write_config, tmp_path, monkeypatch, capsys) -> None:
    path = write_config(epochs=3)
    _ctrl_c_after_one_epoch(monkeypatch)
    code = _train_main_catching_exit(["--config", str(path), "--output", str(tmp_path / "runs")])
    assert code == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted: continue with")


def test_resume_replays_the_shuffle_of_a_dataset_that_is_not_tensors(
    small_config, user_components, tmp_path
) -> None:
    # A DataLoader's own shuffle restarts its generator on resume (epoch 0's order again);
    # EpochShuffle serves each epoch's order whatever epoch the run starts at.
    cfg = small_config(epochs=4, data="user_components.plain_datasets", data_config={})
    whole = train(dataclasses.replace(cfg, project="Whole"), tmp_path)
    run_dir = seed_dirs(cfg, tmp_path)[0]
    with pytest.raises(RuntimeError, match="stopped by the test"):
        fit_seed(cfg, cfg.seeds[0], run_dir, FitOptions(callbacks=[StopBeforeEpoch(2)]))
    resumed = train(cfg, tmp_path, resume=True)
    assert resumed.results[0].history == whole.results[0].history


def test_epoch_shuffle_serves_each_epoch_s_order_whatever_epoch_it_starts_at() -> None:
    from lightning_hpo.builtin.data import EpochShuffle

    epoch = [0]
    sampler = EpochShuffle(10, seed=5, epoch=lambda: epoch[0])
    orders = []
    for e in range(4):
        epoch[0] = e
        orders.append(list(sampler))
    assert all(sorted(order) == list(range(10)) for order in orders)
    assert len({tuple(order) for order in orders}) == 4  # a new order each epoch
    for e in (3, 1):
        epoch[0] = e
        assert list(EpochShuffle(10, seed=5, epoch=lambda: epoch[0])) == orders[e]


# --------------------------------------------------------------------------- schedules


class SchedulerSteps(Callback):
    """How many times the run's learning-rate schedule stepped, and its interval."""

    def on_fit_end(self, trainer, pl_module) -> None:
        config = trainer.lr_scheduler_configs[0]
        self.steps, self.interval = config.scheduler.last_epoch, config.interval


@pytest.mark.parametrize(
    ("scheduler", "config"),
    [
        ("torch.optim.lr_scheduler.OneCycleLR", {"max_lr": 0.01, "interval": "step"}),
        ("torch.optim.lr_scheduler.CosineAnnealingLR", {"interval": "step"}),
        ("torch.optim.lr_scheduler.CosineAnnealingLR", {}),
    ],
    ids=["one-cycle per step", "cosine per step", "cosine per epoch"],
)
def test_the_built_in_module_steps_its_schedule_per_step_or_per_epoch(
    small_config, tmp_path, scheduler, config
) -> None:
    cfg = small_config(epochs=3, scheduler=scheduler, scheduler_config=config)
    seen = SchedulerSteps()
    fit_seed(cfg, 1, tmp_path / "1", FitOptions(callbacks=[seen]))
    per_step = config.get("interval") == "step"
    assert seen.interval == ("step" if per_step else "epoch")
    assert seen.steps == (3 * STEPS_PER_EPOCH if per_step else 3)


def test_scheduler_interval_is_epoch_or_step(small_config_dict) -> None:
    from lightning_hpo.config.run import run_config_from_dict

    data = small_config_dict(scheduler_config={"interval": "hourly"})
    with pytest.raises(ConfigError, match="scheduler_config.interval: expected epoch or step"):
        run_config_from_dict(data, "<test>")


def test_a_trial_records_what_pfl_can_know_of_its_schedule(small_config) -> None:
    from lightning_hpo.tuning.objective import lr_schedule

    cosine = "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert lr_schedule(small_config(scheduler=cosine, scheduler_config={"interval": "step"})) == {
        "name": cosine,
        "T_max": small_config().epochs,
        "interval": "step",
    }
    # A period given in steps cannot be placed on epochs: unknown.
    per_step = small_config(scheduler=cosine, scheduler_config={"interval": "step", "T_max": 500})
    assert lr_schedule(per_step)["T_max"] is None
