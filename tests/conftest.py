"""Shared fixtures: small, fast run configs and helpers to write them as YAML.

As in ashleve/lightning-hydra-template's tests/conftest.py, the template config is
shrunk (few epochs, one seed, CPU, a tiny network and data set) so a training run
takes well under a second.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
RUN_TEMPLATE = REPO_ROOT / "configs" / "run_template.yaml"

# skip_policy: under LIGHTNING_HPO_REQUIRE_SERVICES=1 (CI) a skip not in its allow-list fails.
# pytester: runs small pytest sessions (tests/test_skip_policy.py).
pytest_plugins = ["pytester", "skip_policy"]

# What every small run changes from configs/run_template.yaml.
SMALL = {
    "project": "Test",
    "device": "cpu",
    "seeds": [1],
    "epochs": 2,
    "batch_size": 64,
    "net_config": {"nodes": 8, "layers": 1, "activation": "GELU"},
    "data_config": {"n": 400},
}


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    merged.update(copy.deepcopy(overrides))
    return merged


@pytest.fixture(scope="session")
def small_config_dict() -> Callable[..., dict[str, Any]]:
    """``make(**overrides)``: the template as a dict, shrunk, with ``overrides`` on top."""
    from lightning_hpo.config.yamlio import load_yaml

    template = load_yaml(RUN_TEMPLATE)

    def make(**overrides: Any) -> dict[str, Any]:
        return _merge(_merge(template, SMALL), overrides)

    return make


@pytest.fixture(scope="session")
def small_config(small_config_dict):
    """``make(**overrides)``: a validated, resolved RunConfig for a sub-second CPU run."""
    from lightning_hpo.config.run import build, run_config_from_dict

    def make(**overrides: Any):
        cfg = run_config_from_dict(small_config_dict(**overrides), "<small config>")
        build(cfg, "<small config>")
        return cfg

    return make


@pytest.fixture
def write_config(tmp_path, small_config_dict) -> Callable[..., Path]:
    """``write(name="run.yaml", **overrides)``: a small config written as YAML under tmp_path."""
    from lightning_hpo.config.yamlio import dump_yaml

    def write(name: str = "run.yaml", **overrides: Any) -> Path:
        path = tmp_path / name
        dump_yaml(small_config_dict(**overrides), path)
        return path

    return write


@pytest.fixture
def user_components(monkeypatch):
    """Make tests/user_components.py importable as ``user_components``, as a user's own module."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    import user_components as module

    return module


@pytest.fixture(scope="session")
def quiet():
    """Lightning's banners off, as the command line does."""
    from lightning_hpo.console import quiet_lightning

    quiet_lightning()


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each test sees the once-per-process notes (``console.note_once``) afresh, whatever ran
    before it in this process."""
    from lightning_hpo import console

    monkeypatch.setattr(console, "_noted", set())


@pytest.fixture(autouse=True)
def fresh_signals():
    """Each test starts with no signal received or held, whatever an earlier test sent."""
    from lightning_hpo.tuning.signals import forget_signals

    forget_signals()
    yield
    forget_signals()
