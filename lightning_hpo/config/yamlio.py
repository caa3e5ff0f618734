"""Strict, safe YAML reading and plain YAML writing.

PyYAML follows YAML 1.1, which surprises people in two ways we fix here:
``1e-3`` is read as a string (we read it as a float, as YAML 1.2 does), and
``yes``/``no``/``on``/``off`` silently become booleans (we reject them and ask
for ``true``/``false`` or a quoted string). Duplicate keys, which PyYAML keeps
last-wins, are an error.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lightning_hpo.errors import ConfigError

_FLOAT = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_AMBIGUOUS_BOOLS = {"yes", "no", "on", "off", "y", "n"}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that knows which file it reads, for error messages. ``load_yaml``
    checks the node tree for duplicate keys and YAML 1.1 booleans before it constructs."""

    source = "<yaml>"

    def construct_yaml_bool(self, node):
        if node.value.lower() in _AMBIGUOUS_BOOLS:
            raise ConfigError(
                self.source,
                f"line {node.start_mark.line + 1}",
                f"'{node.value}' is a YAML 1.1 boolean",
                f"write true/false for a boolean, or quote it ('{node.value}') for a string",
            )
        return super().construct_yaml_bool(node)


def _check_nodes(node: yaml.Node, path: str, source: str, visited: set[int] | None = None) -> None:
    """Refuse duplicate keys and YAML 1.1 booleans, naming each by its dotted key path.

    A node reached again through an alias is checked once (aliases may nest or recurse).
    """
    visited = set() if visited is None else visited
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_nodes(item, path, source, visited)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[tuple[str, str], int] = {}
    for key_node, value_node in node.value:
        key = f"{path}.{key_node.value}" if path else str(key_node.value)
        line = key_node.start_mark.line + 1
        if (key_node.tag, key) in seen:
            raise ConfigError(
                source,
                key,
                f"duplicate key (lines {seen[key_node.tag, key]} and {line})",
                "keep only one of them",
            )
        seen[key_node.tag, key] = line
        _refuse_ambiguous_bools(source, key, value_node)
        _check_nodes(value_node, key, source, visited)


def _refuse_ambiguous_bools(source: str, key: str, node: yaml.Node) -> None:
    """Name the key whose value (or list item) is a YAML 1.1 boolean such as ``yes``."""
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    for item in items:
        if (
            isinstance(item, yaml.ScalarNode)
            and item.tag == "tag:yaml.org,2002:bool"
            and item.value.lower() in _AMBIGUOUS_BOOLS
        ):
            raise ConfigError(
                source,
                key,
                f"'{item.value}' is a YAML 1.1 boolean (line {item.start_mark.line + 1})",
                f"write true/false for a boolean, or quote it ('{item.value}') for a string",
            )


_StrictLoader.add_constructor("tag:yaml.org,2002:bool", _StrictLoader.construct_yaml_bool)
# YAML 1.2 floats: 1e-3 and 5E2 are numbers, not strings. Resolvers are looked up by
# first character, so register for every character a number can start with.
_StrictLoader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_float(loader, node):
    value = node.value.replace("_", "")
    if re.fullmatch(r"[-+]?\d+", value):
        return int(value)
    return (
        float(value) if _FLOAT.match(value) else yaml.SafeLoader.construct_yaml_float(loader, node)
    )


_StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping strictly; every problem is a ConfigError naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, None, "file not found", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            source,
            None,
            f"cannot read the file ({exc.__class__.__name__})",
            "check its permissions and encoding",
        ) from None
    loader = _StrictLoader(text)
    loader.source = source
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_nodes(node, "", source)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, where, f"invalid YAML ({problem})", "fix the syntax") from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(source, None, "the file is empty", "start from the template in configs/")
    if not isinstance(data, dict):
        raise ConfigError(
            source,
            None,
            f"expected a mapping of keys, got a {type(data).__name__}",
            "start from the template in configs/",
        )
    return data


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def dump_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write a mapping as block-style YAML, atomically (no half-written file).

    The temporary file is this writer's own, so processes writing the same file at once
    (workers finishing a study together) each replace it whole; the last one wins.
    """
    path = Path(path)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp's is 0600; an ordinary file's follows the umask
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
