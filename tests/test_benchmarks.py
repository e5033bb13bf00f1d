"""Smoke test of the benchmarks' quick modes: they run end to end and write the JSON the README describes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"machine", "versions", "settings", "results"}
MACHINE_FIELDS = {"cpu_model", "cores", "memory_gib", "load_average_at_start"}
VERSION_FIELDS = {"swarm", "python", "torch", "hivemind", "numpy"}
SCALING_ROW_FIELDS = {
    "peers", "link", "mode", "compression", "samples_per_s", "utilisation", "bytes_sent_per_peer_per_sync",
    "time_to_target_s", "simulated",
}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> dict[str, dict]:
    """Both benchmarks' --quick modes, run side by side (each takes ~20-30 s on an idle 2-core machine)."""
    folder = tmp_path_factory.mktemp("benchmarks")
    commands = {
        "overhead": ["benchmarks/overhead.py", "--quick"],
        "scaling": ["benchmarks/scaling.py", "--quick"],
    }
    running = {
        name: subprocess.Popen([sys.executable, *argv, "--results-dir", str(folder)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, argv in commands.items()
    }
    documents = {}
    for name, process in running.items():
        output, _ = process.communicate(timeout=400)
        assert process.returncode == 0, f"{name} --quick failed:\n{output[-3000:]}"
        documents[name] = json.loads((folder / f"{name}.json").read_text())
        assert (folder / f"{name}.md").read_text().startswith("# ")
        plot = documents[name].get("plot")
        assert plot is None and "plot_note" in documents[name] or (folder / plot).stat().st_size > 0
    return documents


def _check_common(document: dict) -> None:
    assert TOP_LEVEL <= set(document)
    assert MACHINE_FIELDS <= set(document["machine"])
    assert VERSION_FIELDS <= set(document["versions"])


@pytest.mark.timeout(420)
def test_overhead_quick_mode_reports_the_throughput_ratio_of_both_arms(quick_results):
    document = quick_results["overhead"]
    _check_common(document)
    results = document["results"]
    assert results["device"] == "cpu"
    assert set(results["arms"]) == {"plain", "swarm"}
    for arm in results["arms"].values():
        assert arm["samples_per_s_mean"] > 0
        assert arm["samples_per_s_stdev"] >= 0
    expected = results["arms"]["swarm"]["samples_per_s_mean"] / results["arms"]["plain"]["samples_per_s_mean"]
    assert results["throughput_ratio"] == pytest.approx(expected, rel=1e-3)
    assert results["throughput_ratio_stdev"] >= 0


@pytest.mark.timeout(420)
def test_scaling_quick_mode_writes_simulated_rows_with_real_averaging(quick_results):
    document = quick_results["scaling"]
    _check_common(document)
    rows = document["results"]["rows"]
    assert rows
    for row in rows:
        assert SCALING_ROW_FIELDS <= set(row)
        assert row["simulated"] is True and row["time_to_target_s"] is None
        assert row["mode"] == "dedloc" and row["link"] == "loopback"
        assert row["samples_per_s"] > 0 and 0 < row["utilisation"] <= 1
    two = next(row for row in rows if row["peers"] == 2)
    assert two["bytes_sent_per_peer_per_sync"] > 0  # fp16 gradients of 0.84M parameters, x 2(n-1)/n
    assert "model_on_paper" in document["results"]


def test_scaling_refuses_an_emulated_link_it_cannot_build_here():
    process = subprocess.run([sys.executable, "benchmarks/scaling.py", "--link", "20mbit-50ms", "--results-dir",
                              "/nonexistent"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode != 0
    assert "not implemented here" in process.stderr
