"""Follow the configs through one tuned trial: which package modules the run and optimize
configs enter, how often the walk climbs back to a module it already left, and how often
an import path is resolved.

Usage: ``python benchmarks/config_walk.py`` (a 1-trial, 2-epoch study in a temporary folder,
preflight included, the way ``tune.py`` runs it).

A "stay" is a maximal run of consecutive calls into one module, counting only calls that
receive one of the two configs the command loaded (its ``RunConfig`` and its
``OptimizeConfig``) as an argument other than ``self``: a config's own methods and
properties do not count, and neither do the configs made from them for a trial or a
corner of the search space. A "climb back" is a stay in a module the walk had already
left once. "Resolver calls" counts every call into the import-path resolver during the
whole study, preflight included.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import yaml

CONFIG_TYPES = {"RunConfig", "OptimizeConfig"}
RESOLVER = ("resolve",)


def walk(argv: list[str]) -> tuple[list[str], int]:
    from lightning_hpo.cli import tune_main

    stays: list[str] = []
    loaded: dict[str, object] = {}  # the first RunConfig and OptimizeConfig seen: the loaded ones
    resolver_calls = 0

    def profile(frame, event, arg):
        nonlocal resolver_calls
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("lightning_hpo"):
            return
        code = frame.f_code
        if code.co_name in RESOLVER and module.endswith("imports"):
            resolver_calls += 1
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        arguments = [frame.f_locals.get(n) for n in names if n != "self"]
        for value in arguments:
            kind = type(value).__name__
            if kind in CONFIG_TYPES:
                loaded.setdefault(kind, value)
        if any(
            type(v).__name__ in CONFIG_TYPES and loaded[type(v).__name__] is v for v in arguments
        ):
            if not stays or stays[-1] != module:
                stays.append(module)

    sys.setprofile(profile)
    try:
        status = tune_main(argv)
    finally:
        sys.setprofile(None)
    assert status == 0, f"the study exited {status}"
    return stays, resolver_calls


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = {
            "project": "Walk",
            "device": "cpu",
            "seeds": [1, 2],
            "epochs": 2,
            "batch_size": 128,
            "data_config": {"n": 300},
            "net_config": {"nodes": 8, "layers": 1},
        }
        opt = {
            "study_name": "walk",
            "trials": 1,
            "search_space": {
                "optimizer_config": {"lr": {"type": "float", "min": 1e-3, "max": 1e-2}}
            },
        }
        (tmp / "run.yaml").write_text(yaml.safe_dump(run))
        (tmp / "opt.yaml").write_text(yaml.safe_dump(opt))
        os.chdir(tmp)
        stays, resolver_calls = walk(
            ["--run-config", "run.yaml", "--optimize-config", "opt.yaml", "--output", "runs"]
        )
    seen: set[str] = set()
    climbs = 0
    for module in stays:
        climbs += module in seen
        seen.add(module)
    print(f"modules entered: {len(seen)}")
    print(f"stays: {len(stays)}")
    print(f"climbs back up: {climbs}")
    print(f"resolver calls: {resolver_calls}")
    print("walk: " + " -> ".join(m.removeprefix("lightning_hpo.") for m in stays))


if __name__ == "__main__":
    main()
