"""Train the model a run config describes, once per seed. See `python train.py --help`."""

import sys

from lightning_hpo.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
