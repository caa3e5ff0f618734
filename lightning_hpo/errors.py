"""The error types users see, each reported on one line: a config problem (``ConfigError``,
exit status 2) and a run that trained but recorded nothing (``RunFailed``, exit status 1)."""

from __future__ import annotations


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """``exc`` on one line: its class and the first line of its message (the first ``limit``
    characters of it, when given), or its class alone when it says nothing."""
    said = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {said[0][:limit]}" if said else exc.__class__.__name__


class ConfigError(Exception):
    """Bad input, reported as ``<file>: <key>: <problem>; <fix>``.

    The command line prints it on one line and exits with status 2.

    Args:
        source: the file (or option) the bad value came from.
        key: dotted path of the offending key, e.g. ``search_space.optimizer_config.lr``.
        problem: what is wrong, including what was expected.
        fix: how to fix it.
    """

    def __init__(self, source: str, key: str | None, problem: str, fix: str | None = None):
        self.source, self.key, self.problem, self.fix = source, key, problem, fix
        where = f"{source}: {key}" if key else str(source)
        super().__init__(f"{where}: {problem}" + (f"; {fix}" if fix else ""))

    def with_source(self, source: str) -> ConfigError:
        """The same error, attributed to another file."""
        return ConfigError(source, self.key, self.problem, self.fix)


class RunFailed(Exception):
    """A run that ended without recording its monitored metric once, reported as
    ``<run folder>: <problem>; <fix>``. Its seeds get no result.json (``--resume`` trains them
    again rather than reading them as finished); the command line prints it on one line and
    exits with status 1, and a study's trial fails with it as the reason.
    """

    def __init__(self, source: str, problem: str, fix: str):
        self.source, self.problem, self.fix = source, problem, fix
        super().__init__(f"{source}: {problem}; {fix}")
