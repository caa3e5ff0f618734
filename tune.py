"""Tune a run config's hyperparameters with Optuna. See `python tune.py --help`."""

import sys

from lightning_hpo.cli import tune_main

if __name__ == "__main__":
    sys.exit(tune_main())
