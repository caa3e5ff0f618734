"""optuna-dashboard's view of a storage: the argument its command line accepts.

optuna-dashboard guesses the storage from its one argument (``_storage_url.py``): a URL
starting with ``redis`` is a Redis journal, an existing file is a journal file, anything
else shaped like ``scheme://...`` an RDB URL. Our ``journal:`` and ``journal+redis:``
forms are neither, so they are translated.
"""

from __future__ import annotations

import shlex

from lightning_hpo.storage.connect import redact, storage_file


def dashboard_argument(url: str) -> str:
    """The storage argument optuna-dashboard accepts for our storage ``url`` (password redacted)."""
    if url.startswith("journal+redis:"):
        return redact(url[len("journal+") :])
    if url.startswith("journal:"):
        return str(storage_file(url))
    return redact(url)


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {shlex.quote(dashboard_argument(url))}"
