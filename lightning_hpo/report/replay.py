"""The pruning audit's replay: the study's best completed curves replayed, step by step,
through a PFL pruner in an in-memory copy of the study, to count how many of them it would
have cut (a false prune: the trial ended among the best). Deterministic; trains nothing."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lightning_hpo.report.data import Replay, ReplayedTrial

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from lightning_hpo.pruners.pfl import PFLPruner


def replay_study(
    ranked: Sequence[FrozenTrial],
    pruned: Sequence[FrozenTrial],
    top_k: int,
    spec: dict[str, Any] | None,
    source: str | None,
    direction: Any,
) -> Replay:
    """The audit's replay: ``replay_top_k`` with the pruner ``spec`` names (from
    ``source``: the given config or the study's stored pruner), saying which."""
    pruner, stand_in = replay_pruner(spec, strict=source == "config")
    replay = replay_top_k(ranked, top_k, pruner, direction, pruned)
    return dataclasses.replace(
        replay,
        stand_in_for=spec["name"] if stand_in and spec else None,
        pruner_from=source,
    )


def replay_pruner(spec: dict[str, Any] | None, strict: bool = True) -> tuple[PFLPruner, bool]:
    """A new instance of the pruner ``spec`` (``{"name", "kwargs"}``, an optimize config's
    ``pruner``) names when it is a PFLPruner, else a stand-in PFLPruner built from
    whichever of its kwargs PFLPruner accepts (e.g. n_startup_trials). None: PFLPruner's
    defaults. The flag says whether it is a stand-in. A name that does not import is a
    ConfigError when ``strict``, else (a study's stored pruner of code not installed
    here) gets a stand-in too."""
    from lightning_hpo.config.imports import accepted_kwargs, resolve
    from lightning_hpo.errors import ConfigError
    from lightning_hpo.pruners.pfl import PFLPruner

    if spec is None:
        return PFLPruner(), False
    kwargs = dict(spec.get("kwargs") or {})
    try:
        cls = resolve(spec["name"], "the study's pruner", "pruner.name")
    except ConfigError:
        if strict:
            raise
        cls = None
    if isinstance(cls, type) and issubclass(cls, PFLPruner):
        try:
            return cls(**kwargs), False
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                "pruner.kwargs",
                None,
                f"{spec['name']} rejected its arguments: {exc}",
                "fix pruner.kwargs in the optimize config",
            ) from None
    accepted = accepted_kwargs(PFLPruner) or set()
    return PFLPruner(**{k: v for k, v in kwargs.items() if k in accepted}), True


def replay_top_k(
    ranked: Sequence[FrozenTrial],
    top_k: int,
    pruner: PFLPruner,
    direction: Any,
    pruned: Sequence[FrozenTrial] = (),
) -> Replay:
    """Replay each of the ``top_k`` best completed curves, step by step up to its
    second-to-last step, through ``pruner`` in an in-memory study holding every
    other completed trial and the ``pruned`` ones (the rank PFL asks for counts them, as
    it did live). A prune there is a false prune: the trial ended among the best.
    Deterministic; trains nothing."""
    import optuna

    results = []
    for trial in ranked[:top_k]:
        if not trial.intermediate_values:
            continue
        memory = optuna.create_study(direction=direction)
        others = [t for t in ranked if t.number != trial.number] + list(pruned)
        memory.add_trials(others)
        # A number no reference holds, so the pruner's "not itself" rule excludes nothing else.
        replayed = copy.copy(trial)
        replayed.number = len(others)
        results.append(_replay_one(pruner, memory, replayed, trial.number))
    cut = sum(r.would_prune for r in results)
    return Replay(
        pruner=_describe(pruner),
        replayed=len(results),
        would_prune=cut,
        false_prune_rate=cut / len(results) if results else None,
        trials=results,
    )


def _replay_one(
    pruner: PFLPruner, study: optuna.Study, trial: FrozenTrial, number: int
) -> ReplayedTrial:
    from lightning_hpo.pruners.records import prefix_trial

    # Not the last step: training is over by then, so a prune there would cut nothing.
    for step in sorted(trial.intermediate_values)[:-1]:
        decision = pruner.evaluate(study, prefix_trial(trial, step))
        if decision.prune:
            return ReplayedTrial(
                number=number,
                value=trial.value,
                would_prune=True,
                step=step,
                epoch=step + 1,
                reason=decision.reason,
                pfl=decision.pfl,
                threshold=decision.threshold,
                probability=decision.probability,
                band=decision.band,
            )
    return ReplayedTrial(number=number, value=trial.value, would_prune=False)


def _describe(pruner: Any) -> str:
    fields = {
        k.lstrip("_"): v
        for k, v in vars(pruner).items()
        if not k.endswith("cache") and not isinstance(v, (dict, list))
    }
    return f"{type(pruner).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})"
