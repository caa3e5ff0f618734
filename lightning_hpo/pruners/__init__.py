"""Pruners: PFL, the Predicted Final Loss pruner (``pfl``), its curve arithmetic (``curves``)
and what it reads from and writes on a trial (``records``)."""

from lightning_hpo.pruners.curves import predict_final_loss
from lightning_hpo.pruners.pfl import PFLPruner

__all__ = ["PFLPruner", "predict_final_loss"]
