"""A real `swarm launch` in its own session, and real run folders (published versions, a ledger) to give it.

The coordinator tests drive the CLI exactly as an organiser would, on 127.0.0.1 only (tests/cli_process.py).
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from pathlib import Path

import torch

from cli_process import CliProcess


class RunFolder:
    """The folders one coordinator writes: state, checkpoints, ledger, summary (each passed by its flag)."""

    def __init__(self, root: Path):
        self.root = root
        self.state = root / "coordinator"
        self.checkpoints = root / "checkpoints"
        self.ledger = root / "ledger"
        self.summary = root / "summary.json"
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def flags(self) -> list[str]:
        return ["--state-dir", str(self.state), "--checkpoint-dir", str(self.checkpoints),
                "--ledger-dir", str(self.ledger), "--summary-file", str(self.summary)]

    def status(self) -> dict:
        return json.loads((self.state / "status.json").read_text())

    def publish_versions(self, recipe_path: Path, epochs: list[int]) -> dict[int, Path]:
        """Real versions of the recipe's model, as the coordinator publishes them, each with other weights."""
        from coordinator.checkpoint import VersionInfo, save_version
        from swarm.model import build_model
        from swarm.recipe import load_recipe
        from swarm.tokenizer import build_tokenizer

        recipe = load_recipe(recipe_path)
        tokenizer = build_tokenizer(recipe.tokenizer)
        model = build_model(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
        published = {}
        for epoch in epochs:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.01 * epoch)
            info = VersionInfo(epoch=epoch, samples_seen=256 * epoch, val_loss=4.0,
                               recipe_fingerprint=recipe.fingerprint, data_digest="0" * 64, data_description="test")
            published[epoch] = save_version(self.checkpoints, model, tokenizer, recipe, info)
        return published

    def credit_epochs(self, run_id: str, epochs: range, peer: str = "12D3KooWVolunteer") -> None:
        """Ledger entries for `epochs`, signed with the coordinator's own key (as a previous launch left them)."""
        from swarm.ledger import Ledger, LedgerEntry, load_or_create_signing_key

        key = load_or_create_signing_key(self.state / "ledger_signing_key.pem")
        with Ledger.open(self.ledger, key, run_id=run_id) as ledger:
            for epoch in epochs:
                ledger.commit_epoch([LedgerEntry(run_id=run_id, epoch=epoch, peer_id=peer, name="ada", team="",
                                                 claimed_samples=256, granted_samples=256, reason="", compute_s=2.0,
                                                 timestamp=time.time())])


def tree_digest(folder: Path) -> dict[str, str]:
    """sha1 of every file under `folder`: what "never deleted or replaced" is checked against."""
    return {path.relative_to(folder).as_posix(): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def launch(run: RunFolder, recipe: Path, *extra: str, port: int = 0, dashboard_port: int | None = 0,
           name: str = "coordinator") -> CliProcess:
    args = ["launch", str(recipe), "--host", "127.0.0.1", "--port", str(port), *run.flags(),
            "--dashboard-port", str(-1 if dashboard_port is None else dashboard_port), *extra]
    number = len(list((run.root / "logs").glob(f"{name}-*.log")))
    return CliProcess(args, run.root / "logs" / f"{name}-{number}.log")


def join(run: RunFolder, address: str, name: str, *extra: str) -> CliProcess:
    """A volunteer on this machine (one thread), with its identity under the run folder."""
    args = ["join", "--initial-peers", address, "--identity", str(run.root / name / "identity"), "--name", name,
            "--team", "tests", "--threads", "1", "--host", "127.0.0.1", "--display", "log", *extra]
    number = len(list((run.root / "logs").glob(f"{name}-*.log")))
    return CliProcess(args, run.root / "logs" / f"{name}-{number}.log")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def read_announcement(address: str, run_id: str):
    """The run's announcement as a volunteer reads it: through a real DHT node joined to `address`."""
    import hivemind

    from swarm import records

    dht = hivemind.DHT(initial_peers=[address], host_maddrs=["/ip4/127.0.0.1/tcp/0"], client_mode=True, start=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            announcement = records.read_announcements(dht.get(records.RUNS_KEY, latest=True)).get(run_id)
            if announcement is not None:
                return announcement
            time.sleep(0.5)
        raise AssertionError(f"no announcement of run {run_id!r} in the DHT at {address}")
    finally:
        dht.shutdown()
