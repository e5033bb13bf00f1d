"""Credit ledger throughput: how fast the coordinator appends and how fast an auditor verifies.

    python benchmarks/ledger.py [--entries 100000] [--entries-per-epoch 100] [--folder DIR]

Appends `--entries` entries in epochs of `--entries-per-epoch`, one signed checkpoint per epoch as the
coordinator does (two fsyncs and a signature each; totals.csv at most every 5 s), reopens the ledger (the
replay a restarted coordinator does), verifies it all (every leaf, every checkpoint root, signature and
consistency proof), and builds and checks one inclusion proof. Writes benchmarks/results/ledger.json and
ledger.md. About 12 s for 100k entries on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import cryptography  # noqa: E402
import pydantic  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

import swarm  # noqa: E402
from swarm.ledger import (  # noqa: E402
    CHECKPOINTS_FILE,
    ENTRIES_FILE,
    Ledger,
    LedgerEntry,
    build_inclusion_proof,
    verify_inclusion_proof,
    verify_ledger,
)

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RUN_ID = "bench"


def machine() -> dict[str, object]:
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Shared machines: other work running during the benchmark shows here and slows every figure.
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


def versions() -> dict[str, str]:
    return {
        "swarm": swarm.__version__,
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "pydantic": pydantic.VERSION,
    }


def simulated_epochs(entries: int, entries_per_epoch: int) -> list[list[LedgerEntry]]:
    """Volunteers with realistic ids and names; a few are granted less than they claimed."""
    epochs = []
    for epoch in range(1, entries // entries_per_epoch + 1):
        epochs.append(
            [
                LedgerEntry(
                    run_id=RUN_ID,
                    epoch=epoch,
                    peer_id=f"12D3KooW{peer:044d}",
                    name=f"volunteer-{peer}",
                    team=f"team-{peer % 10}",
                    claimed_samples=4096,
                    granted_samples=4096 if peer % 7 else 2048,
                    reason="" if peer % 7 else "claimed faster than the recipe allows",
                    compute_s=31.25 + peer / 100,
                    timestamp=1_700_000_000.0 + epoch * 30,
                )
                for peer in range(entries_per_epoch)
            ]
        )
    return epochs


def benchmark_ledger(entries: int, entries_per_epoch: int, folder: Path) -> dict[str, dict[str, float]]:
    key = Ed25519PrivateKey.generate()
    epochs = simulated_epochs(entries, entries_per_epoch)
    total = sum(len(epoch) for epoch in epochs)

    start = time.perf_counter()
    with Ledger.open(folder, key, run_id=RUN_ID) as ledger:
        for epoch_entries in epochs:
            ledger.commit_epoch(epoch_entries)
    append_s = time.perf_counter() - start

    start = time.perf_counter()
    Ledger.open(folder, key, run_id=RUN_ID).close()
    reopen_s = time.perf_counter() - start

    start = time.perf_counter()
    report = verify_ledger(folder)
    verify_s = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"the benchmark ledger does not verify: {report.problem}")

    start = time.perf_counter()
    proof = build_inclusion_proof(folder, total // 2)
    prove_s = time.perf_counter() - start
    start = time.perf_counter()
    proof_report = verify_inclusion_proof(proof, pinned_key=key.public_key())
    check_proof_s = time.perf_counter() - start
    if not proof_report.ok:
        raise SystemExit(f"the benchmark proof does not verify: {proof_report.problem}")

    return {
        "append": {
            "entries": total,
            "checkpoints": len(epochs),
            "seconds": round(append_s, 3),
            "entries_per_s": round(total / append_s),
            "ms_per_epoch": round(1000 * append_s / len(epochs), 3),
        },
        "reopen": {"seconds": round(reopen_s, 3), "entries_per_s": round(total / reopen_s)},
        "verify": {
            "seconds": round(verify_s, 3),
            "entries_per_s": round(total / verify_s),
            "checkpoints": report.checkpoints,
        },
        "inclusion_proof": {
            "build_s": round(prove_s, 3),  # includes verifying the whole ledger first
            "check_ms": round(1000 * check_proof_s, 3),
            "audit_path_hashes": len(proof.audit_path),
        },
        "size": {
            "entries_bytes": (folder / ENTRIES_FILE).stat().st_size,
            "checkpoints_bytes": (folder / CHECKPOINTS_FILE).stat().st_size,
            "bytes_per_entry": round((folder / ENTRIES_FILE).stat().st_size / total, 1),
        },
    }


def markdown(results: dict[str, object]) -> str:
    settings, numbers = results["settings"], results["results"]
    assert isinstance(settings, dict) and isinstance(numbers, dict)
    ledger = numbers["ledger"]
    machine_info = results["machine"]
    assert isinstance(machine_info, dict)
    rows = [
        (
            "append (1 signed checkpoint per epoch)",
            f"{ledger['append']['entries_per_s']:,} entries/s",
            f"{ledger['append']['seconds']} s, {ledger['append']['ms_per_epoch']} ms per epoch",
        ),
        (
            "reopen (replay after a restart)",
            f"{ledger['reopen']['entries_per_s']:,} entries/s",
            f"{ledger['reopen']['seconds']} s",
        ),
        (
            "verify everything",
            f"{ledger['verify']['entries_per_s']:,} entries/s",
            f"{ledger['verify']['seconds']} s, {ledger['verify']['checkpoints']} checkpoints",
        ),
        (
            "check one inclusion proof",
            f"{ledger['inclusion_proof']['check_ms']} ms",
            f"{ledger['inclusion_proof']['audit_path_hashes']} hashes in the audit path",
        ),
    ]
    lines = [
        "# Credit ledger",
        "",
        f"{settings['entries']:,} entries, {settings['entries_per_epoch']} per epoch; "
        f"{machine_info['cpu_model']}, {machine_info['cores']} cores, Python {machine_info['python']}; "
        f"{ledger['size']['bytes_per_entry']} bytes per entry. `python benchmarks/ledger.py`.",
        "",
        "| operation | rate | detail |",
        "|---|---|---|",
        *(f"| {name} | {rate} | {detail} |" for name, rate, detail in rows),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000, help="Entries to append and verify.")
    parser.add_argument("--entries-per-epoch", type=int, default=100, help="Entries per signed checkpoint.")
    parser.add_argument("--folder", type=Path, default=None, help="Where to write the ledger (default: a temp dir).")
    args = parser.parse_args()
    if args.entries < args.entries_per_epoch or args.entries_per_epoch < 1:
        parser.error("--entries must be at least --entries-per-epoch, which must be positive")

    parent = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=args.folder))
    try:
        ledger_results = benchmark_ledger(args.entries, args.entries_per_epoch, parent / "ledger")
    finally:
        shutil.rmtree(parent, ignore_errors=True)

    results = {
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "entries": args.entries // args.entries_per_epoch * args.entries_per_epoch,
            "entries_per_epoch": args.entries_per_epoch,
            "folder": str(parent.parent),
        },
        "results": {"ledger": ledger_results},
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "ledger.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS_DIR / "ledger.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
