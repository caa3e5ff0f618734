"""``trainer_config``: extra Trainer options, checked like every ``*_config``, passed through to
the Trainer, tunable, and keeping fused seeds what each is alone.

Bad values are in the run-config corpus (tests/bad_inputs/run/trainer_config_*.yaml).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from lightning_hpo.config.lightning_args import OWNED, fusion_blocker
from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import build, load_run_config, run_config_from_dict
from lightning_hpo.errors import ConfigError
from lightning_hpo.fused.stacking import clip_grad_norm_per_seed
from lightning_hpo.training.runs import plan_fusion, train
from lightning_hpo.training.trainer import build_trainer

pytestmark = pytest.mark.usefixtures("quiet")

TEMPLATE = Path(__file__).resolve().parents[1] / "configs" / "run_template.yaml"


def checked(trainer_config, **overrides):
    cfg = run_config_from_dict(
        {"device": "cpu", "trainer_config": trainer_config, **overrides}, "<test>"
    )
    build(cfg, "<test>")
    return cfg


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize("key", sorted(OWNED))
def test_keys_the_project_sets_are_refused_with_what_to_use_instead(key) -> None:
    with pytest.raises(ConfigError) as info:
        run_config_from_dict({"trainer_config": {key: 1}}, "<test>")
    assert info.value.key == f"trainer_config.{key}"
    assert info.value.fix == OWNED[key]


@pytest.mark.parametrize(
    ("options", "key", "text"),
    [
        ({"gradient_clip_vall": 1.0}, "trainer_config.gradient_clip_vall", "gradient_clip_val"),
        ({"precision": "fast"}, "trainer_config.precision", "'bf16-mixed'"),
        ({"deterministic": "sometimes"}, "trainer_config.deterministic", "'warn'"),
        ({"benchmark": 1}, "trainer_config.benchmark", "bool"),
        ({"accumulate_grad_batches": 2.5}, "trainer_config.accumulate_grad_batches", "int"),
        ({"gradient_clip_val": -1.0}, "trainer_config.gradient_clip_val", ">= 0"),
        ({"limit_train_batches": -1}, "trainer_config", "limit_train_batches"),
        ({"profiler": "nope"}, "trainer_config", "profiler"),
    ],
)
def test_bad_options_are_config_errors_naming_trainer_config(options, key, text) -> None:
    with pytest.raises(ConfigError) as info:
        checked(options)
    assert info.value.key == key
    assert text in str(info.value)


def test_options_reach_the_trainer_and_deterministic_stays_off_by_default() -> None:
    options = {
        "gradient_clip_val": 0.5,
        "gradient_clip_algorithm": "value",
        "accumulate_grad_batches": 3,
        "precision": "bf16-mixed",
        "check_val_every_n_epoch": 2,
        "deterministic": True,
    }
    try:
        trainer = build_trainer(checked(options), logger=False)
        assert torch.are_deterministic_algorithms_enabled()
        assert (trainer.gradient_clip_val, trainer.gradient_clip_algorithm) == (0.5, "value")
        assert trainer.accumulate_grad_batches == 3
        assert trainer.precision == "bf16-mixed"
        assert trainer.check_val_every_n_epoch == 2
        assert trainer.max_epochs == 50  # the run config's epochs, never trainer_config's
    finally:
        build_trainer(checked({}), logger=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_no_profiler_by_default_and_the_users_profiler_when_asked() -> None:
    from lightning.pytorch.profilers import SimpleProfiler

    from lightning_hpo.training.trainer import NoProfiler

    trainer = build_trainer(checked({}), logger=False)
    assert isinstance(trainer.profiler, NoProfiler)
    with trainer.profiler.profile("a hook"), trainer.profiler.profile("a nested hook"):
        pass
    simple = build_trainer(checked({"profiler": "simple"}), logger=False)
    assert isinstance(simple.profiler, SimpleProfiler)


def test_trainer_config_is_tunable_and_checked_in_the_search_space() -> None:
    run = checked({})
    space = {"trainer_config": {"gradient_clip_val": {"type": "float", "min": 0.1, "max": 1.0}}}
    opt = optimize_config_from_dict({"search_space": space, "pruner": None}, run, "<opt>")
    assert opt.merge(run, {"trainer_config_gradient_clip_val": 0.3}).trainer_config == {
        "gradient_clip_val": 0.3
    }
    misspelt = {"trainer_config": {"gradient_clip": {"type": "float", "min": 0.1, "max": 1.0}}}
    with pytest.raises(ConfigError, match="did you mean 'gradient_clip_val'"):
        optimize_config_from_dict({"search_space": misspelt, "pruner": None}, run, "<opt>")
    owned = {"trainer_config": {"max_epochs": {"type": "int", "min": 1, "max": 3}}}
    with pytest.raises(ConfigError, match="set epochs"):
        optimize_config_from_dict({"search_space": owned, "pruner": None}, run, "<opt>")


# --------------------------------------------------------------------------- fused seeds


def test_norm_clipping_per_seed_is_clip_grad_norm_of_each_seed_alone() -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 5), (3, 5), (3, 1, 4)]
    scales = torch.tensor([0.01, 1.0, 100.0])  # below, around and far above max_norm
    grads = [torch.randn(s, generator=generator) * scales.view(3, *[1] * (len(s) - 1)) for s in shapes]  # fmt: skip
    stacked = [torch.zeros(s, requires_grad=True) for s in shapes]
    for p, g in zip(stacked, grads):
        p.grad = g.clone()
    norms = clip_grad_norm_per_seed(stacked, 1.0)
    for seed in range(3):
        alone = [torch.zeros(s[1:], requires_grad=True) for s in shapes]
        for p, g in zip(alone, grads):
            p.grad = g[seed].clone()
        norm = torch.nn.utils.clip_grad_norm_(alone, 1.0)
        assert norms[seed] == pytest.approx(float(norm), rel=1e-6)
        for p, q in zip(alone, stacked):
            torch.testing.assert_close(q.grad[seed], p.grad, rtol=1e-6, atol=0)
    assert norms[0] < 1.0 < norms[2]  # one seed untouched, one clipped


def default_task(**overrides):
    """The template's task, smaller, with SGD: AdamW's step hardly depends on the gradient's
    scale, so clipping would barely show in its curves."""
    cfg = load_run_config(TEMPLATE, {"device": "cpu"})
    small = {
        "data_config": {"n": 1000},
        "epochs": 3,
        "batch_size": 100,
        "net_config": {"nodes": 32, "layers": 2, "activation": "GELU"},
        "optimizer": "torch.optim.SGD",
        "optimizer_config": {"lr": 0.1, "momentum": 0.9},
    }
    return dataclasses.replace(cfg, **(small | overrides))


@pytest.mark.parametrize(
    "options",
    [
        {"gradient_clip_val": 0.05},
        {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"},
        {"accumulate_grad_batches": 3},
    ],
    ids=["clip-norm", "clip-value", "accumulate"],
)
def test_fused_seeds_with_trainer_options_match_each_seed_alone(options, tmp_path) -> None:
    fused = train(default_task(trainer_config=options, fuse_seeds=True, project="f"), tmp_path)
    alone = train(default_task(trainer_config=options, fuse_seeds=False, project="a"), tmp_path)
    plain = train(default_task(fuse_seeds=True, project="p"), tmp_path)
    assert all(r.together == 3 for r in fused.results)
    for f, a, p in zip(fused.results, alone.results, plain.results):
        assert f.history == pytest.approx(a.history, rel=5e-3), f.seed
        assert a.history != pytest.approx(p.history, rel=5e-3), "the option changed nothing"


def test_a_shared_loss_scaler_keeps_seeds_apart() -> None:
    assert fusion_blocker({"precision": "bf16-mixed", "gradient_clip_val": 1.0}) is None
    cfg = default_task(trainer_config={"precision": "16-mixed"}, fuse_seeds="auto")
    *_, stacking, reason = plan_fusion(cfg, cfg.seeds)
    assert stacking is None
    assert "16-mixed" in reason and "GradScaler" in reason
