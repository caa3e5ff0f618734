"""The one error type users see: a config problem, reported on one line."""

from __future__ import annotations


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
