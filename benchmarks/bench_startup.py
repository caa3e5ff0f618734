"""Start-up latency of the command line: --help and bad configs must not wait for torch.

Times, as subprocesses in interleaved repeats (medians):

* ``python tune.py --help``
* ``python tune.py --optimize-config <trials: 0>``: a bad optimize config (exit 2)
* ``python tune.py --run-config <epochs: 0>``: a bad run config (exit 2)
* ``python train.py --config <epochs: 0>`` (exit 2)
* ``python train.py --help``

against ``python -c pass``, ``python -c "import torch"`` and
``python -c "import lightning.pytorch"``. Then, for each CLI case, runs it in-process
under ``python -X importtime`` and reports whether torch / lightning / optuna were
imported and through which chain of modules.

Run: ``python benchmarks/bench_startup.py`` (~1 minute), ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, interleaved, median, print_table  # noqa: E402

PY = sys.executable
ROOT_DEFAULT = ROOT  # --root may point the commands at another checkout
HEAVY = ("torch", "lightning", "optuna", "tensorboard", "numpy", "sqlalchemy")


def cases(tmp: Path) -> dict[str, list[str]]:
    bad_opt = tmp / "bad_trials.yaml"
    text = (ROOT / "configs" / "optimize_template.yaml").read_text()
    bad_opt.write_text(re.sub(r"(?m)^trials:\s*\d+", "trials: 0", text))
    bad_run = tmp / "bad_epochs.yaml"
    bad_run.write_text(
        re.sub(
            r"(?m)^epochs:\s*\d+", "epochs: 0", (ROOT / "configs" / "run_template.yaml").read_text()
        )
    )
    out = str(tmp / "runs")
    return {
        "python -c pass": ["-c", "pass"],
        "python -c 'import torch'": ["-c", "import torch"],
        "python -c 'import lightning.pytorch'": ["-c", "import lightning.pytorch"],
        "tune.py --help": ["tune.py", "--help"],
        "tune.py, optimize config trials: 0": [
            "tune.py",
            "--optimize-config",
            str(bad_opt),
            "--output",
            out,
            "--storage",
            f"sqlite:///{tmp}/s.db",
        ],
        "tune.py, run config epochs: 0": [
            "tune.py",
            "--run-config",
            str(bad_run),
            "--output",
            out,
            "--storage",
            f"sqlite:///{tmp}/s.db",
        ],
        "train.py --help": ["train.py", "--help"],
        "train.py, run config epochs: 0": ["train.py", "--config", str(bad_run), "--output", out],
    }


def run(args: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True)
    return (
        time.perf_counter() - start,
        proc.returncode,
        (proc.stderr.strip().splitlines() or [""])[-1],
    )


TRACER = r"""
import json, runpy, sys, traceback
HEAVY = %r
first = {}

class Tracer:
    # Records where each heavy package is first imported from, then lets the normal finders work.
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in HEAVY and top not in first:
            stack = traceback.extract_stack()[:-1]
            ours = [f"{f.filename.split('/lightning_hpo/')[-1] if '/lightning_hpo/' in f.filename else f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.line.strip()[:70] if f.line else ''}"
                    for f in stack if "lightning_hpo" in f.filename]
            # the innermost frame that is not importlib machinery
            outer = [f for f in stack if "importlib" not in f.filename and "<frozen" not in f.filename]
            first[top] = {"via": ours[-3:], "importer": outer[-1].filename.rsplit("/site-packages/", 1)[-1] + ":" + str(outer[-1].lineno) if outer else ""}
        return None

sys.meta_path.insert(0, Tracer())
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit:
    pass
sys.stdout.flush()
print("@@" + json.dumps({"imported": sorted(m for m in HEAVY if m in sys.modules), "first": first}), file=sys.__stderr__)
""" % (HEAVY,)  # noqa: UP031 - the template is full of braces


def import_trace(args: list[str]) -> dict:
    """Which heavy packages a CLI run imports (sys.modules at exit) and from where (a meta-path tracer)."""
    import json

    proc = subprocess.run([PY, "-c", TRACER, *args], cwd=ROOT, capture_output=True, text=True)
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("@@")), None)
    if line is None:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(line[2:])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--root",
        type=Path,
        default=ROOT_DEFAULT,
        help="checkout whose tune.py/train.py to time (default: this one); e.g. a patched copy",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 2
    global ROOT
    ROOT = args.root.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    all_cases = cases(tmp)
    for a in all_cases.values():  # warm the page cache and .pyc files
        run(a)
    times: dict[str, list[float]] = {k: [] for k in all_cases}
    status: dict[str, tuple[int, str]] = {}
    for _, name in interleaved(list(all_cases), args.repeats, seed=3):
        seconds, rc, last = run(all_cases[name])
        times[name].append(seconds)
        status[name] = (rc, last)
    torch_s = median(times["python -c 'import torch'"])
    base_s = median(times["python -c pass"])
    rows = []
    for name in all_cases:
        m = median(times[name])
        rc, last = status[name]
        rows.append(
            (
                name,
                f"{m:.3f}",
                f"{m / torch_s:.2f}",
                f"{(m - base_s) / (torch_s - base_s):.2f}",
                rc,
                last[:90],
            )
        )
    print_table(
        [
            "command",
            "wall s (median)",
            "x import torch",
            "(t - python) / (torch - python)",
            "exit",
            "last stderr line",
        ],
        rows,
        title=f"bench_startup: {args.repeats} interleaved repeats, subprocesses from {ROOT}",
    )

    print(
        "\nHeavy imports on each CLI path (sys.modules at exit; the first import of torch traced to the project's frames):"
    )
    rows = []
    for name, a in all_cases.items():
        if not name.startswith(("tune.py", "train.py")):
            continue
        trace = import_trace(a)
        hows = []
        for pkg in ("torch", "lightning"):
            where = trace["first"].get(pkg)
            hows.append(" -> ".join(where["via"]) + f" -> [{where['importer']}]" if where else "-")
        rows.append((name, ", ".join(trace["imported"]) or "none", *hows))
    print_table(
        [
            "command",
            "heavy packages imported",
            "first import of torch: project frames (outer first) -> [importing file]",
            "first import of lightning",
        ],
        rows,
    )
    verdict = [r[0] for r in rows if "torch" in r[1].split(", ")]
    print(
        "\ntarget: no torch/Lightning on --help and config-error paths -> "
        + ("met" if not verdict else "missed on: " + "; ".join(verdict))
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
