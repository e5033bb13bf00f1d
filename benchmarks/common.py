"""What every swarm benchmark shares: the machine and version record, the result writer, small statistics.

Each benchmark writes `benchmarks/results/<name>.json` with four top-level sections that make two runs
comparable (`machine`, `versions`, `settings`, `results`), a markdown table `<name>.md` and a PNG plot:

>>> from benchmarks.common import write_results                                    # doctest: +SKIP
>>> write_results("overhead", settings={...}, results={...}, markdown="| ... |", plot=draw)  # doctest: +SKIP

The machines these run on are shared: the load average at start and at the end is recorded, and a figure
taken under a load above the core count is slower than the machine can do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# --quick runs write here unless given --results-dir: a smoke test must never replace the committed full results
# (scaling.py reads convergence.json from RESULTS_DIR). Git ignores it.
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"
RECIPES_DIR = REPO_ROOT / "recipes"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine() -> dict[str, Any]:
    """The machine, as far as it changes a figure; load average (1, 5, 15 min) taken now."""
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
    }


def versions() -> dict[str, str]:
    import hivemind
    import numpy
    import torch

    import swarm

    return {
        "swarm": swarm.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hivemind": hivemind.__version__,
        "numpy": numpy.__version__,
    }


def mean_stdev(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values)."""
    values = list(values)
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ratio_stdev(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float]:
    """Ratio of two means and its standard deviation by first-order error propagation (independent arms)."""
    mean_a, sd_a = mean_stdev(numerator)
    mean_b, sd_b = mean_stdev(denominator)
    ratio = mean_a / mean_b
    relative = ((sd_a / mean_a) ** 2 + (sd_b / mean_b) ** 2) ** 0.5
    return ratio, ratio * relative


def run_worker(argv: Sequence[str], result_file: Path, timeout_s: float, env: dict | None = None) -> dict[str, Any]:
    """Run one benchmark worker in a fresh Python process and return the JSON it wrote to `result_file`."""
    result_file.unlink(missing_ok=True)
    command = [sys.executable, *argv, "--result-file", str(result_file)]
    process = subprocess.run(command, cwd=REPO_ROOT, env=env, timeout=timeout_s, capture_output=True, text=True)
    if process.returncode != 0 or not result_file.exists():
        tail = "\n".join((process.stdout + process.stderr).splitlines()[-30:])
        raise RuntimeError(f"worker {' '.join(argv)} failed with exit code {process.returncode}:\n{tail}")
    return json.loads(result_file.read_text())


def add_results_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="Folder for the JSON, markdown and plot (default benchmarks/results; with --quick, "
                             "benchmarks/results/quick).")


def parse_benchmark_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, with the default results folder of a quick run or a full one."""
    args = parser.parse_args(argv)
    if getattr(args, "results_dir", RESULTS_DIR) is None:
        args.results_dir = QUICK_RESULTS_DIR if getattr(args, "quick", False) else RESULTS_DIR
    return args


def write_results(
    name: str,
    settings: dict[str, Any],
    results: Any,
    markdown: str,
    plot: Callable[[Path], None] | None = None,
    machine_info: dict[str, Any] | None = None,
    results_dir: Path = RESULTS_DIR,
) -> dict[str, Any]:
    """Write <name>.json, <name>.md and (with matplotlib) <name>.png; returns the JSON document.

    Without matplotlib the plot is skipped and both files say so (`pip install -e '.[bench]'` adds it).
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    info = dict(machine_info or machine())
    info.setdefault("load_average_at_end", load_average())
    document = {"machine": info, "versions": versions(), "settings": settings, "results": results}
    plot_path = results_dir / f"{name}.png"
    plot_note = None
    if plot is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError:
            plot_note = "plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
        else:
            plot(plot_path)
    document["plot"] = plot_path.name if plot is not None and plot_note is None else None
    if plot_note:
        document["plot_note"] = plot_note
        markdown = markdown.rstrip("\n") + f"\n\n_{plot_note}_\n"
    (results_dir / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    (results_dir / f"{name}.md").write_text(markdown.rstrip("\n") + "\n")
    return document


def process_tree(pid: int) -> list:
    """psutil.Process objects of `pid` and all its descendants (missing ones are skipped)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a markdown header: CPU, cores and the load when the run started."""
    load = info.get("load_average_at_start", [float("nan")])[0]
    return f"{info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB; load average {load} at start"


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
