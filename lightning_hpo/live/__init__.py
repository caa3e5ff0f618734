"""The live display in a terminal: ``screen`` (a region redrawn once a second, with lines
printed above it that stay in the scrollback), ``study`` (tune.py's view of a study, read
from its storage) and ``seeds`` (train.py's seeds, epoch by epoch).

Only where standard output is a terminal (``screen.wanted``); anywhere else (a log file, a
pipe, CI, a ``--workers`` child) the commands print their plain lines and nothing else.
"""
