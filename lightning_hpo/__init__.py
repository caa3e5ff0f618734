"""lightning-hpo: train PyTorch Lightning models from YAML and tune them with Optuna.

The public API, from Python as from the command line:

- ``train(run_config, **options)`` and ``tune(run_config, optimize_config, **options)``;
- ``load_run(run_dir)``: a trained network back from its run folder;
- ``PFLPruner`` (and ``predict_final_loss``), the study's default pruner;
- ``RunConfig``, ``OptimizeConfig`` and ``ConfigError``.
"""

from __future__ import annotations

from lightning_hpo.errors import ConfigError

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "OptimizeConfig",
    "PFLPruner",
    "RunConfig",
    "__version__",
    "load_run",
    "predict_final_loss",
    "train",
    "tune",
]

# Imported on first use, so `import lightning_hpo` (and the CLI's --help) loads neither
# torch, Lightning nor Optuna.
_LAZY = {
    "train": "lightning_hpo.api",
    "tune": "lightning_hpo.api",
    "load_run": "lightning_hpo.training.loading",
    "PFLPruner": "lightning_hpo.pruners",
    "predict_final_loss": "lightning_hpo.pruners",
    "RunConfig": "lightning_hpo.config.run",
    "OptimizeConfig": "lightning_hpo.config.optimize",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_hpo' has no attribute {name!r}")
