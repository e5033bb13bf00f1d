"""A version due at epoch N is published from a state of epoch N or later, never from a peer still behind.

A newcomer's DiLoCo run with `every_epochs: 2` published `epoch-000007` (validation loss 3.57) between 6 and 8: the
version due at 8 was fetched from the peer whose round had found no group and was one epoch behind, and versions are
never deleted. Here a real hivemind peer serves its state at epoch 7 to the coordinator's real state fetcher.
"""

from __future__ import annotations

import logging
from functools import partial

import hivemind
import pytest
import torch

from coordinator.coordinator import Coordinator, CoordinatorSettings
from coordinator.state import StateFetcher
from swarm.model import build_model
from swarm.optim import parameter_order
from swarm.recipe import parse_recipe


@pytest.mark.timeout(120)
def test_a_due_version_is_not_published_from_a_state_older_than_its_epoch(tmp_path):
    recipe = parse_recipe({
        "run": {"id": "due-version"},
        "model": {"architecture": "gpt2", "config": {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}},
        "data": {"seq_len": 32},
        "checkpoint": {"every_epochs": 2},
    })
    coordinator = Coordinator(recipe, CoordinatorSettings(checkpoint_dir=str(tmp_path / "checkpoints"),
                                                          state_dir=str(tmp_path / "state")))
    coordinator.model = build_model(recipe.model, vocab_size=259)
    behind = build_model(recipe.model, vocab_size=259)
    dht = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    donor_dht = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True,
                             initial_peers=[str(address) for address in dht.get_visible_maddrs()])
    params = dict(behind.named_parameters())
    donor = hivemind.optim.state_averager.TrainingStateAverager(
        dht=donor_dht, optimizer=partial(torch.optim.SGD, lr=0.1),
        params=[params[name] for name in parameter_order(behind)], prefix="due-version_state_averager",
        start=True)
    donor.local_epoch, donor.state_sharing_priority = 7, 7
    coordinator.fetcher = StateFetcher(dht, recipe.run.id)
    said: list[str] = []
    heard = logging.Handler(logging.INFO)
    heard.emit = lambda record: said.append(record.getMessage())  # "swarm" may not propagate (setup_logging)
    logging.getLogger("swarm.coordinator").addHandler(heard)
    try:
        coordinator.view.epoch = 9  # the swarm is at 9: the version due is epoch 8's
        logging.getLogger("swarm.coordinator").setLevel(logging.INFO)
        for _ in range(2):
            assert coordinator._checkpoint_due() and coordinator._due_version_epoch() == 8
            assert coordinator._publish_checkpoint(timeout_s=30, min_epoch=coordinator._due_version_epoch()) is None
        assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
        # said once, although asked again (every monitor period, in a run)
        assert [message for message in said if "older than the epoch" in message] == ["A peer sent its state of epoch 7, older than the epoch 8 this version is due at (its last "
                        "round may still be finishing): asking again"], said
        assert coordinator._checkpoint_due()  # still due: asked again at the next look
    finally:
        logging.getLogger("swarm.coordinator").removeHandler(heard)
        coordinator.fetcher.shutdown()
        donor.shutdown()
        donor_dht.shutdown()
        dht.shutdown()
