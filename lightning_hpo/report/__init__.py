"""`tune.py report`: what a study found, and whether its search space and pruner served it.

The report reads a study without changing it: it works on a study another process is
still running, and never creates a study, a storage file, or Optuna's tables in a
database that lacks them (``lightning_hpo.storage.connect.open_study``). Its parts:

- ``data``: what a report holds, as frozen dataclasses (``Report``);
- ``stored``: what the study stores about itself (metric, ranges, pruner, project), which
  the report describes it by;
- ``numbers``: computing every number of the report (``build_report``);
- ``text``: the report as text for a terminal (``format_text``);
- ``plots``: PNG plots under ``<output>/<project>_Opt/reports/<study_name>/``
  (``write_plots``).

The command line (``report_main``) lives in ``lightning_hpo.cli`` with the other commands.
"""

from lightning_hpo.report.data import (
    Audit,
    ChoiceEdge,
    EdgeWarning,
    EpochSavings,
    Importances,
    PredictionAccuracy,
    ProgressBucket,
    RangeEdge,
    Replay,
    ReplayedTrial,
    Report,
    TrialSummary,
    jsonable,
)
from lightning_hpo.report.numbers import (
    EDGE_MARGIN,
    boundary_warnings,
    build_report,
    epoch_savings,
    param_importances,
    prediction_accuracy,
    range_position,
    widened_range,
)
from lightning_hpo.report.plots import write_plots
from lightning_hpo.report.replay import replay_pruner, replay_top_k
from lightning_hpo.report.text import format_text

__all__ = [
    "EDGE_MARGIN",
    "Audit",
    "ChoiceEdge",
    "EdgeWarning",
    "EpochSavings",
    "Importances",
    "PredictionAccuracy",
    "ProgressBucket",
    "RangeEdge",
    "Replay",
    "ReplayedTrial",
    "Report",
    "TrialSummary",
    "boundary_warnings",
    "build_report",
    "epoch_savings",
    "format_text",
    "jsonable",
    "param_importances",
    "prediction_accuracy",
    "range_position",
    "replay_pruner",
    "replay_top_k",
    "widened_range",
    "write_plots",
]
