"""Published versions on disk: what their files look like to the organiser's other tools."""

from __future__ import annotations

import json
import os
import stat

import pytest
import transformers
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.checkpoint import VersionInfo, save_version
from swarm.ledger import Ledger, LedgerEntry, LedgerSourceError, verify_ledger
from swarm.recipe import Recipe
from swarm.tokenizer import ByteTokenizer


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_every_file_of_a_version_has_the_mode_the_umask_gives(tmp_path, umask):
    """model.safetensors was 0600 (transformers writes it through a private temporary file) while every other file
    was 0644: a web server serving checkpoints/ as another user was refused the weights only."""
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=259, n_positions=32)
    recipe = Recipe(run={"id": "modes"})
    info = VersionInfo(epoch=1, samples_seen=64, val_loss=None, recipe_fingerprint=recipe.fingerprint,
                       data_digest="0" * 64, data_description="test bytes")
    key = Ed25519PrivateKey.generate()
    with Ledger.open(tmp_path / "ledger", key, run_id="modes") as ledger:
        head = ledger.commit_epoch([])
    previous = os.umask(umask)
    try:
        version = save_version(tmp_path / "checkpoints", transformers.GPT2LMHeadModel(config),
                               ByteTokenizer().to_transformers(), recipe, info, ledger_head=head,
                               ledger_public_key=ledger.public_key_pem)
    finally:
        os.umask(previous)
    modes = {path.relative_to(version).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in (version, *version.rglob("*"))}
    assert "model.safetensors" in modes and "ledger/head.json" in modes
    expected = {name: (0o777 if (version / name).is_dir() else 0o666) & ~umask for name in modes}
    assert {name: oct(mode) for name, mode in modes.items()} == {name: oct(mode) for name, mode in expected.items()}
    assert transformers.GPT2LMHeadModel.from_pretrained(version).lm_head.weight.shape == (259, 16)  # still loads


def _entries(epoch: int, peers: int, run_id: str) -> list[LedgerEntry]:
    return [LedgerEntry(run_id=run_id, epoch=epoch, peer_id=f"12D3KooWpeer{number:04d}", name=f"volunteer {number}",
                        team="", claimed_samples=64, granted_samples=64, compute_s=1.0, reason="",
                        timestamp=1.7e9 + epoch)
            for number in range(peers)]


def _version_with_head(tmp_path, ledger: Ledger, epoch: int):
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=259, n_positions=16)
    recipe = Recipe(run={"id": ledger.run_id})
    head = ledger.latest_checkpoint  # as the coordinator does: the card and the head from the same checkpoint
    info = VersionInfo(epoch=epoch, samples_seen=64, val_loss=None, recipe_fingerprint=recipe.fingerprint,
                       data_digest="0" * 64, data_description="test bytes", ledger_root=head.root_hash,
                       ledger_tree_size=head.tree_size)
    return save_version(tmp_path / "checkpoints", transformers.GPT2LMHeadModel(config),
                        ByteTokenizer().to_transformers(), recipe, info, ledger_head=ledger.latest_checkpoint,
                        ledger_public_key=ledger.public_key_pem)


def test_a_version_carries_the_ledgers_signed_head_not_a_copy_so_the_folder_grows_linearly(tmp_path):
    """Each version carried a whole copy of the ledger: a run's checkpoint folder grew with the square of its length
    (7 GB a day for the tiny recipe). A version now carries the signed checkpoint it was published with, whose size
    does not depend on the ledger's, and that is enough to prove the ledger still holds its credit."""
    key = Ed25519PrivateKey.generate()
    ledger = Ledger.open(tmp_path / "ledger", key, run_id="linear")
    try:
        ledger.commit_epoch(_entries(1, 3, "linear"))
        early = _version_with_head(tmp_path, ledger, 1)
        for epoch in range(2, 202):
            ledger.commit_epoch(_entries(epoch, 3, "linear"))
        late = _version_with_head(tmp_path, ledger, 201)
    finally:
        ledger.close()

    def ledger_bytes(version):
        return sum(path.stat().st_size for path in (version / "ledger").iterdir())

    assert sorted(path.name for path in (late / "ledger").iterdir()) == ["head.json", "public_key.pem"]
    assert "--trusted\n<this folder>` proves" in (late / "README.md").read_text()
    ledger_size = (tmp_path / "ledger" / "entries.jsonl").stat().st_size
    assert ledger_size > 100_000 and ledger_bytes(late) < 1_000
    assert abs(ledger_bytes(late) - ledger_bytes(early)) <= 4  # the head's numbers are a few digits longer

    # the run's ledger verifies against each version's head, given as the version's folder
    for version, size in ((early, 3), (late, 603)):
        report = verify_ledger(tmp_path / "ledger", version)
        assert report.ok and report.trusted_tree_size == size and report.trusted_from == "given", report.problem
    # a ledger whose early history was rewritten after the version was published does not
    lines = (tmp_path / "ledger" / "entries.jsonl").read_text().splitlines()
    forged = json.loads(lines[0])
    forged["granted_samples"] = 6400
    rewritten = tmp_path / "rewritten"
    with Ledger.open(rewritten, key, run_id="linear") as copy:
        copy.commit_epoch([LedgerEntry(**forged), *(LedgerEntry(**json.loads(line)) for line in lines[1:3])])
        for epoch in range(2, 202):
            copy.commit_epoch(_entries(epoch, 3, "linear"))
    report = verify_ledger(rewritten, early)
    assert not report.ok and report.problem_kind == "history_rewritten", report
    assert verify_ledger(rewritten).ok  # on its own, a re-signed ledger is consistent: only the head catches it

    # the version itself is not a ledger: the error says what to run instead
    for given in (late, late / "ledger"):
        with pytest.raises(LedgerSourceError, match=r"published version's ledger head .* --trusted "):
            verify_ledger(given)
