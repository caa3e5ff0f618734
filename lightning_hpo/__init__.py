"""lightning-hpo: train PyTorch Lightning models from YAML and tune them with Optuna."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["PFLPruner", "load_run", "predict_final_loss", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import lightning_hpo` (and the CLI's --help) does not import Optuna.
    if name == "PFLPruner":
        from lightning_hpo.pruners import PFLPruner

        return PFLPruner
    if name == "predict_final_loss":
        from lightning_hpo.pruners import predict_final_loss

        return predict_final_loss
    if name == "load_run":
        from lightning_hpo.training.loading import load_run

        return load_run
    raise AttributeError(f"module 'lightning_hpo' has no attribute {name!r}")
