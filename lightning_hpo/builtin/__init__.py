"""The built-in task: an MLP, the supervised LightningModule and its data.

A run config names them by these short paths, e.g. ``net: lightning_hpo.builtin.MLP``.
"""

from lightning_hpo.builtin.data import (
    SupervisedData,
    synthetic_classification,
    synthetic_regression,
)
from lightning_hpo.builtin.mlp import MLP
from lightning_hpo.builtin.supervised import SupervisedModule

__all__ = [
    "MLP",
    "SupervisedData",
    "SupervisedModule",
    "synthetic_classification",
    "synthetic_regression",
]
