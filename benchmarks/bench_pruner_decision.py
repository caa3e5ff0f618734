"""Time PFLPruner decisions against a large study.

Builds a study of ``--trials`` completed trials with ``--epochs`` intermediate values each
(in memory, and in SQLite unless ``--no-sqlite``), starts a running trial that has reported
half of its epochs and times ``trial.should_prune()`` -- the whole decision as a training
loop sees it, including Optuna's storage reads and the stored-prediction write:

* cold: the first decision of a fresh pruner (empty prediction cache), repeated ``--cold``
  times with a new pruner each;
* warm: ``--decisions`` further decisions of one pruner;
* evaluate: warm :meth:`PFLPruner.evaluate`, i.e. the decision without the write.

Run: ``python benchmarks/bench_pruner_decision.py``
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState, create_trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_hpo.pruners.pfl import PFLPruner  # noqa: E402


def _curves(n_trials: int, n_epochs: int, seed: int = 0) -> list[list[float]]:
    rng = random.Random(seed)
    curves = []
    for _ in range(n_trials):
        a, b, c = rng.uniform(0.5, 3.0), 10 ** rng.uniform(-1.7, -0.5), rng.uniform(0.1, 1.0)
        curves.append(
            [a * math.exp(-b * t) + c + rng.gauss(0.0, 0.01) for t in range(1, n_epochs + 1)]
        )
    return curves


def _in_memory_study(curves: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    study.add_trials(
        create_trial(value=c[-1], intermediate_values=dict(enumerate(c))) for c in curves
    )
    return study


def _sqlite_study(curves: list[list[float]], path: Path) -> optuna.Study:
    """Write the trials with bulk inserts, then load the study as a fresh process would."""
    # Study.add_trials issues two ORM queries per intermediate value (~36 ms per
    # 100-epoch trial), so 1,000 trials would take half a minute; bulk inserts take ~1 s.
    from optuna.storages._rdb import models

    url = f"sqlite:///{path}"
    study = optuna.create_study(storage=url, study_name="bench", direction="minimize")
    storage = optuna.storages.RDBStorage(url)
    now = datetime.now()
    finite_value = models.TrialValueModel.TrialValueType.FINITE
    finite_step = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    with storage.engine.begin() as conn:
        conn.execute(
            models.TrialModel.__table__.insert(),
            [
                {
                    "number": number,
                    "study_id": study._study_id,
                    "state": TrialState.COMPLETE,
                    "datetime_start": now,
                    "datetime_complete": now,
                }
                for number in range(len(curves))
            ],
        )
        trial_ids = dict(
            conn.execute(
                models.TrialModel.__table__.select()
                .with_only_columns(models.TrialModel.number, models.TrialModel.trial_id)
                .where(models.TrialModel.study_id == study._study_id)
            ).all()
        )
        conn.execute(
            models.TrialValueModel.__table__.insert(),
            [
                {
                    "trial_id": trial_ids[n],
                    "objective": 0,
                    "value": c[-1],
                    "value_type": finite_value,
                }
                for n, c in enumerate(curves)
            ],
        )
        conn.execute(
            models.TrialIntermediateValueModel.__table__.insert(),
            [
                {
                    "trial_id": trial_ids[n],
                    "step": step,
                    "intermediate_value": value,
                    "intermediate_value_type": finite_step,
                }
                for n, c in enumerate(curves)
                for step, value in enumerate(c)
            ],
        )
    storage.engine.dispose()
    return optuna.load_study(study_name="bench", storage=url)


def _running_trial(study: optuna.Study, values: list[float]) -> optuna.Trial:
    trial = study.ask()
    for step, value in enumerate(values):
        trial.report(value, step)
    return trial


def _ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def _time_decisions(
    study: optuna.Study, trial: optuna.Trial, n_cold: int, n_warm: int
) -> dict[str, list[float]]:
    def fresh_pruner() -> PFLPruner:
        pruner = PFLPruner(n_startup_trials=10, n_warmup_epochs=10)  # the defaults otherwise
        study.pruner = pruner
        return pruner

    cold = []
    for _ in range(n_cold):
        fresh_pruner()
        cold.append(_ms(trial.should_prune))
    pruner = fresh_pruner()
    trial.should_prune()
    warm = [_ms(trial.should_prune) for _ in range(n_warm)]
    frozen = study._storage.get_trial(trial._trial_id)
    evaluate = [_ms(lambda: pruner.evaluate(study, frozen)) for _ in range(n_warm)]
    return {"cold": cold, "warm": warm, "evaluate": evaluate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=200, help="warm decisions timed")
    parser.add_argument("--cold", type=int, default=20, help="cold decisions timed")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    curves = _curves(args.trials, args.epochs)
    running = _curves(1, args.epochs, seed=1)[0][: args.epochs // 2]
    builders: list[tuple[str, Callable[[Path], optuna.Study]]] = [
        ("in-memory", lambda _: _in_memory_study(curves))
    ]
    if not args.no_sqlite:
        builders.append(("sqlite", lambda d: _sqlite_study(curves, d / "bench.db")))

    print(
        f"{args.trials} completed trials x {args.epochs} epochs; running trial at step "
        f"{len(running) - 1}; PFLPruner's defaults but a 10-epoch warm-up; target epoch = "
        "longest completed curve"
    )
    print(f"{'storage':<10} {'build s':>8} {'case':<9} {'n':>4} {'median ms':>10} {'p95 ms':>8}")
    decisions = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in builders:
            start = time.perf_counter()
            study = build(Path(tmp))
            built = time.perf_counter() - start
            trial = _running_trial(study, running)
            decision = PFLPruner().evaluate(study, study._storage.get_trial(trial._trial_id))
            decisions.append(f"{name}: {decision}")
            for case, samples in _time_decisions(study, trial, args.cold, args.decisions).items():
                print(
                    f"{name:<10} {built:>8.2f} {case:<9} {len(samples):>4} "
                    f"{statistics.median(samples):>10.3f} {_p95(samples):>8.3f}"
                )
    print("\n".join(decisions))


if __name__ == "__main__":
    main()
