"""What a study stores about itself, so the report describes the study as it ran, not
whatever config is at hand: its metric and objective (the metric names the tuner sets),
the ranges its trials were sampled from (their stored distributions), the pruner its
latest run used (the ``pruner`` study user attr) and its project's run folder (the
trials' ``run_dir``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_hpo.attrs import PRUNER_ATTR, RUN_DIR

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from lightning_hpo.config.optimize import OptimizeConfig
    from lightning_hpo.config.search_space import Param

BEST_EPOCH = " (best epoch)"  # OptimizeConfig.value_name's suffix for objective: best
UNNAMED = "value"  # a study that names no metric (made by another tool)


def stored_metric(study: optuna.Study, opt: OptimizeConfig | None = None) -> tuple[str, str]:
    """``(metric, objective)`` as the study names its values (``val_loss``, or
    ``val_loss (best epoch)`` for objective ``best``); for a study that names none,
    ``opt``'s, else ``("value", "last")``."""
    names = study.metric_names
    if not names:
        return (opt.metric, opt.objective) if opt is not None else (UNNAMED, "last")
    name = names[0]
    if name.endswith(BEST_EPOCH):
        return name[: -len(BEST_EPOCH)], "best"
    return name, "last"


def stored_pruner(study: optuna.Study) -> dict[str, Any] | None:
    """The pruner spec ``{"name", "kwargs"}`` the study's latest run used, when stored."""
    spec = study.user_attrs.get(PRUNER_ATTR)
    return spec if isinstance(spec, dict) and isinstance(spec.get("name"), str) else None


def replay_spec(
    study: optuna.Study, opt: OptimizeConfig | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """The pruner the report replays and whose it is (``Replay.pruner_from``): ``opt``'s
    (``"config"``), else the one the study stores (``"study"``), else none (None)."""
    if opt is not None:
        return opt.pruner, "config"
    spec = stored_pruner(study)
    return spec, "study" if spec else None


def stored_params(trials: Sequence[FrozenTrial], best: FrozenTrial | None) -> list[Param]:
    """One ``Param`` per parameter the trials searched, from the distribution the most
    recent trial holding it sampled it from (the study's current range), or, when the
    best value lies outside that range, from the best trial's own. In first-seen order."""

    latest: dict[str, Any] = {}
    for t in sorted(trials, key=lambda t: t.number):
        latest.update(t.distributions)
    best_dists = best.distributions if best is not None else {}
    params = []
    for name, dist in latest.items():
        if best is not None and name in best.params and not _holds(dist, best.params[name]):
            dist = best_dists.get(name, dist)
        params.append(param_of(name, dist))
    return [p for p in params if p is not None]


def _holds(dist: Any, value: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def param_of(name: str, dist: Any) -> Param | None:
    """An Optuna distribution as a ``Param`` named ``name`` (None for an unknown kind)."""
    import optuna.distributions as d

    from lightning_hpo.config.search_space import Param

    if isinstance(dist, d.CategoricalDistribution):
        return Param(None, name, "categorical", choices=list(dist.choices))
    if isinstance(dist, d.IntDistribution):
        return Param(None, name, "int", dist.low, dist.high, dist.step, dist.log)
    if isinstance(dist, d.FloatDistribution):
        return Param(None, name, "float", dist.low, dist.high, dist.step, dist.log)
    return None


def stored_project_folder(trials: Sequence[FrozenTrial]) -> str | None:
    """``<project>_Opt``, the folder the study's trials ran in (``<output>/<project>_Opt/
    <study>/<trial>``, their ``run_dir``), or None when no trial recorded one."""
    for t in trials:
        run_dir = t.user_attrs.get(RUN_DIR)
        if isinstance(run_dir, str) and len(Path(run_dir).parts) >= 3:
            return Path(run_dir).parent.parent.name
    return None
