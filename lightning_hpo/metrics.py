"""Names of the metrics the built-in LightningModule logs once per epoch, and the rule for
the name a study may tune on (any metric its module logs).

Kept apart from ``module`` so config validation can check ``metric`` without importing
Lightning.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from lightning_hpo.errors import ConfigError
from lightning_hpo.fused.seeds import split_seed_metric

TRAIN_LOSS, VAL_LOSS, LR = "train_loss", "val_loss", "lr"
VAL_R2 = "val_r2"  # regression targets (floating point)
VAL_ACC = "val_acc"  # class targets (integers)

# What ``self.log(name, ...)`` names look like: TensorBoard tags such as ``val_f1`` or ``val/f1``.
_NAME = re.compile(r"[A-Za-z_][\w.\-/]*")


def metric_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a metric to tune on, or None when it can.

    Any name a module may log is accepted; whether the module really logs it is known only
    once it has validated a batch (``require_logged``).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return f"expected a metric name such as val_loss or val_acc, got {name!r}"
    plain, seed = split_seed_metric(name)
    if seed is not None:
        return f"{name!r} is one seed's value; the plain name {plain!r} holds the seeds' mean"
    return None


def logged_names(logged: Iterable[str]) -> list[str]:
    """The names a study could tune on among ``logged`` (e.g. ``trainer.callback_metrics``):
    per-seed keys of a fused run and internal keys (with a ``/seed_`` part or from
    ``lightning_hpo/...``) left out."""
    return sorted(
        k for k in logged if split_seed_metric(k)[1] is None and not k.startswith("lightning_hpo/")
    )


def require_logged(metric: str, logged: Iterable[str], source: str = "<optimize config>") -> None:
    """Refuse a ``metric`` the module did not log, naming the ones it did (and the nearest).

    Args:
        metric: the study's ``metric``.
        logged: the keys the module logged after training and validating (for example
            ``trainer.callback_metrics`` after a one-batch run).
        source: the file the metric came from, for the error.

    Raises:
        ConfigError: on ``metric``, listing the logged names.
    """
    names = logged_names(logged)
    if metric in names:
        return
    near = difflib.get_close_matches(metric, names, n=1, cutoff=0.5)
    listing = f"it logs: {', '.join(names)}" if names else "it logs nothing"
    raise ConfigError(
        source,
        "metric",
        f"{metric!r} is never logged by the LightningModule ({listing})",
        f"did you mean '{near[0]}'?" if near else "set metric to one of the logged names",
    )
