"""Published versions on disk: what their files look like to the organiser's other tools."""

from __future__ import annotations

import os
import stat

import pytest
import transformers

from coordinator.checkpoint import VersionInfo, save_version
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
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / "entries.jsonl").write_text("{}\n")
    os.chmod(ledger / "entries.jsonl", 0o600)  # copied with its mode, as copytree does
    previous = os.umask(umask)
    try:
        version = save_version(tmp_path / "checkpoints", transformers.GPT2LMHeadModel(config),
                               ByteTokenizer().to_transformers(), recipe, info, ledger_dir=ledger)
    finally:
        os.umask(previous)
    modes = {path.relative_to(version).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in (version, *version.rglob("*"))}
    assert "model.safetensors" in modes and "ledger/entries.jsonl" in modes
    expected = {name: (0o777 if (version / name).is_dir() else 0o666) & ~umask for name in modes}
    assert {name: oct(mode) for name, mode in modes.items()} == {name: oct(mode) for name, mode in expected.items()}
    assert transformers.GPT2LMHeadModel.from_pretrained(version).lm_head.weight.shape == (259, 16)  # still loads
