"""The config templates shipped inside the package: ``lightning-hpo init`` writes them out,
and the commands fall back on them when there is no ``configs/`` folder (a pip install).

In the repository ``lightning_hpo/templates`` is a link to ``configs/``: one copy to edit,
and every config there ships. Building a wheel copies the files into the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lightning_hpo.console import note_once
from lightning_hpo.errors import ConfigError

CONFIGS = "configs"  # where the commands look first, relative to the working directory
RUN_TEMPLATE = "run_template.yaml"
OPTIMIZE_TEMPLATE = "optimize_template.yaml"


def template_dir() -> Path:
    """The packaged templates' folder."""
    return Path(str(resources.files("lightning_hpo") / "templates"))


def templates() -> list[Path]:
    """Every packaged template, by name."""
    return sorted(template_dir().glob("*.yaml"))


def default_config(name: str) -> str:
    """``configs/<name>`` when the working directory has it (a checkout, or a folder
    ``lightning-hpo init`` wrote), else the packaged template, with a note saying so."""
    local = Path(CONFIGS) / name
    if local.exists():
        return str(local)
    packaged = template_dir() / name
    note_once(
        f"no {local} here: using the packaged {name} ({packaged}); "
        "`lightning-hpo init` writes the templates out to edit"
    )
    return str(packaged)


def init(folder: str | Path = ".") -> list[Path]:
    """Write every packaged template to ``folder/configs/``; return the files written.

    Refuses, before writing anything, when one of them exists already.
    """
    targets = [Path(folder) / CONFIGS / t.name for t in templates()]
    for target in targets:
        if target.exists() or target.is_symlink():
            raise ConfigError(
                str(target),
                None,
                "already exists, and init never overwrites",
                "move it away, or init another folder",
            )
    for source, target in zip(templates(), targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    return targets
