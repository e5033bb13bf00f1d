"""A training peer for tests/peer/ that SIGKILLs all its processes once it has averaged a few rounds.

Run as a script in a new session: `python peer_killed_after_rounds.py RECIPE_JSON IDENTITY_DIR ROUNDS ADDRESS...`.
It joins the DHT at ADDRESS and trains the recipe's mode as its test's peers do: in mode dedloc the regression model
of test_collaboration.py, in mode diloco the GPT-2 and counting task of test_diloco.py. Right after the step in which
it has averaged ROUNDS rounds with its partner, it prints KILLED and kills itself, its DHT, its averagers and its p2p
daemon at once, as `kill -9` or a power cut would: its progress record stays in the DHT until it expires.
The tests start it with `KilledPartner`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from peer.collaboration import build_swarm_optimizer
from peer.diloco import build_diloco_optimizer
from swarm.identity import Identity
from swarm.model import build_model
from swarm.network import create_dht
from swarm.processes import kill_session
from swarm.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
MODEL_SEED = 31  # the regression model's start, the survivor's too
TRUE_WEIGHT = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))


class KilledPartner:
    """tests/peer/peer_killed_after_rounds.py in its own session: trains `recipe` with this process's peer until
    they averaged `rounds` rounds, then SIGKILLs itself with its DHT and p2p daemon. `killed_at`: when it said so."""

    def __init__(self, folder: Path, recipe: Recipe, rounds: int, addresses: list[str]):
        (folder / "recipe.json").write_text(recipe.model_dump_json())
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(folder / "recipe.json"), str(folder / "partner"), str(rounds),
             *addresses], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.killed_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip() == "KILLED":
                self.killed_at = time.monotonic()

    def wait_until_killed(self, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while self.killed_at is None and time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.05)
        self._reader.join(timeout=5)  # once it is dead, its output ends
        assert self.killed_at is not None, f"the partner never averaged its rounds (exit {self.process.poll()})"
        return self.killed_at

    def close(self) -> None:
        if self.process.poll() is None:
            kill_session(self.process.pid)
        self.process.wait(timeout=10)


def regression_peer(dht, recipe: Recipe, identity: Identity):
    torch.manual_seed(MODEL_SEED)
    model = torch.nn.Linear(8, 2)
    micro_batch = recipe.collaboration.micro_batch_size
    optimizer = build_swarm_optimizer(dht, model, recipe, identity, micro_batch_size=micro_batch,
                                      reuse_grad_buffers=True)
    generator = torch.Generator().manual_seed(1)

    def loss() -> torch.Tensor:
        inputs = torch.randn(micro_batch, 8, generator=generator)
        return torch.nn.functional.mse_loss(model(inputs), inputs @ TRUE_WEIGHT.T)

    return optimizer, loss


def counting_peer(dht, recipe: Recipe, identity: Identity):
    from test_diloco import MICRO_BATCH, VOCAB, synthetic_batch  # this script's folder is on sys.path

    model = build_model(recipe.model, vocab_size=VOCAB)
    optimizer = build_diloco_optimizer(dht, model, recipe, identity, MICRO_BATCH, False)
    generator = torch.Generator().manual_seed(1)

    def loss() -> torch.Tensor:
        batch = synthetic_batch(generator)
        return model(input_ids=batch, labels=batch).loss

    return optimizer, loss


def main(recipe_json: str, identity_dir: str, rounds: int, addresses: list[str]) -> None:
    recipe = Recipe.model_validate(json.loads(Path(recipe_json).read_text()))
    identity = Identity.load_or_create(Path(identity_dir))
    dht = create_dht(addresses, host="127.0.0.1", identity=identity)
    build = counting_peer if recipe.collaboration.mode == "diloco" else regression_peer
    optimizer, loss = build(dht, recipe, identity)
    print("READY", flush=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        loss().backward()
        optimizer.step()  # with reuse_grad_buffers (dedloc) and in diloco, the step clears the gradients
        if optimizer.rounds.averaged >= rounds:
            print("KILLED", flush=True)
            kill_session()
        time.sleep(0.05)
    print("NEVER AVERAGED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
