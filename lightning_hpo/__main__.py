"""`python -m lightning_hpo <command>`: the same as the `lightning-hpo` console script."""

import sys

from lightning_hpo.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m lightning_hpo"))
