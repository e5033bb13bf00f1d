"""The credit ledger: RFC 6962 trees and proofs, the crash-safe writer, and the verifier's diagnoses."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import shutil
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from swarm.errors import UsageError
from swarm.ledger import (
    CHECKPOINTS_FILE,
    EMPTY_ROOT,
    ENTRIES_FILE,
    HEAD_FILE,
    PUBLIC_KEY_FILE,
    README_FILE,
    TEAMS_FILE,
    TOTALS_FILE,
    Checkpoint,
    CompactRange,
    InclusionProof,
    Ledger,
    LedgerEntry,
    LedgerError,
    LedgerSourceError,
    MerkleTree,
    SignedCheckpoint,
    build_inclusion_proof,
    canonical_json,
    key_fingerprint,
    latest_checkpoint,
    leaf_hash,
    load_or_create_signing_key,
    merkle_root,
    node_hash,
    public_key_pem,
    verify_consistency,
    verify_inclusion,
    verify_inclusion_proof,
    verify_ledger,
)
from swarm.ledger_cli import ledger_app

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN = "tiny"
PEER = "12D3KooWGzh2yCMkP9vBj3R3n1GNLy9aT7rW6bQxZ5pA8cdEfUvX"


# ---------------------------------------------------------------------------------------------------------------
# An obviously-correct RFC 6962 reference, written straight from the recursive definitions of section 2.1


def reference_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


def reference_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return reference_path(m, leaves[:k]) + [reference_root(leaves[k:])]
    return reference_path(m - k, leaves[k:]) + [reference_root(leaves[:k])]


def reference_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    if m == len(leaves):
        return [] if whole else [reference_root(leaves)]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m <= k:
        return reference_subproof(m, leaves[:k], whole) + [reference_root(leaves[k:])]
    return reference_subproof(m - k, leaves[k:], False) + [reference_root(leaves[:k])]


def leaves_of(count: int) -> list[bytes]:
    return [leaf_hash(f"leaf {index}".encode()) for index in range(count)]


# The test leaves of the Certificate Transparency reference implementation and the roots it publishes for
# their first 0..8 leaves, from which its RFC 6962 test vectors are derived.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION_0_OF_8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]
CT_INCLUSION_5_OF_8 = [
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
]


def test_roots_match_the_rfc6962_reference_vectors():
    leaves = [leaf_hash(data) for data in CT_LEAVES]
    tree = MerkleTree(leaves)
    for size, expected in enumerate(CT_ROOTS):
        assert tree.root(size).hex() == expected
        assert merkle_root(leaves[:size]).hex() == expected
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert [node.hex() for node in tree.inclusion_proof(0, 8)] == CT_INCLUSION_0_OF_8
    assert [node.hex() for node in tree.inclusion_proof(5, 8)] == CT_INCLUSION_5_OF_8


def test_fast_roots_match_the_recursive_definition_for_every_size_up_to_40():
    leaves = leaves_of(40)
    tree = MerkleTree()
    compact = CompactRange()
    assert tree.root() == compact.root() == reference_root([])
    for size in range(1, 41):
        tree.append(leaves[size - 1])
        compact.append(leaves[size - 1])
        expected = reference_root(leaves[:size])
        assert tree.root() == compact.root() == merkle_root(leaves[:size]) == expected
    for size in range(41):  # every prefix stays available after the tree grew
        assert tree.root(size) == reference_root(leaves[:size])


def test_inclusion_proofs_match_the_rfc_and_verify_for_every_leaf_of_every_tree_up_to_20():
    leaves = leaves_of(20)
    tree = MerkleTree(leaves)
    for size in range(1, 21):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == reference_path(index, leaves[:size])
            assert verify_inclusion(leaves[index], index, size, proof, root)
            assert not verify_inclusion(leaves[index], index, size, proof, tree.root(size - 1) if size > 1 else b"")
            other = (index + 1) % size
            if other != index:
                assert not verify_inclusion(leaves[other], index, size, proof, root)
                assert not verify_inclusion(leaves[index], other, size, proof, root)
            assert not verify_inclusion(leaves[index], index, size, proof + [leaves[0]], root)
            if proof:
                assert not verify_inclusion(leaves[index], index, size, proof[:-1], root)
                tampered = [bytes([proof[0][0] ^ 1]) + proof[0][1:]] + proof[1:]
                assert not verify_inclusion(leaves[index], index, size, tampered, root)


def test_consistency_proofs_match_the_rfc_and_verify_for_every_pair_up_to_20():
    leaves = leaves_of(20)
    tree = MerkleTree(leaves)
    for new_size in range(0, 21):
        new_root = tree.root(new_size)
        for old_size in range(0, new_size + 1):
            old_root = tree.root(old_size)
            proof = tree.consistency_proof(old_size, new_size)
            if 0 < old_size < new_size:
                assert proof == reference_subproof(old_size, leaves[:new_size], True)
            else:
                assert proof == []
            assert verify_consistency(old_size, new_size, old_root, new_root, proof)
            if old_size == new_size:
                continue
            assert not verify_consistency(new_size, old_size, new_root, old_root, proof)
            if old_size == 0:
                assert not verify_consistency(0, new_size, leaves[0], new_root, proof)
                continue
            forged_old = leaf_hash(b"rewritten history")
            assert not verify_consistency(old_size, new_size, forged_old, new_root, proof)
            assert not verify_consistency(old_size, new_size, old_root, forged_old, proof)
            assert not verify_consistency(old_size, new_size, old_root, new_root, proof + [leaves[0]])
            assert not verify_consistency(old_size, new_size, old_root, new_root, proof[:-1])
            if old_size + 1 < new_size:
                assert not verify_consistency(old_size + 1, new_size, old_root, new_root, proof)
            tampered = [bytes([proof[-1][0] ^ 1]) + proof[-1][1:]] + proof[:-1] if proof else proof
            if proof:
                assert not verify_consistency(old_size, new_size, old_root, new_root, list(reversed(tampered)))


def test_roots_of_a_100k_entry_tree_at_every_epoch_take_well_under_seconds():
    leaves = [hashlib.sha256(index.to_bytes(8, "big")).digest() for index in range(100_000)]
    start = time.perf_counter()
    tree = MerkleTree(leaves)
    roots = [tree.root(size) for size in range(0, 100_001, 100)]  # one checkpoint per 100 entries
    proofs = [tree.consistency_proof(size, size + 100) for size in range(100, 100_000, 100)]
    elapsed_s = time.perf_counter() - start
    assert roots[-1] == merkle_root(leaves)
    assert len(proofs) == 999
    assert elapsed_s < 10, f"{elapsed_s:.1f} s: roots must cost O(log n) per checkpoint, not O(n)"


# ---------------------------------------------------------------------------------------------------------------
# Entries and the writer


def entry(epoch: int, peer: str, **changes: object) -> LedgerEntry:
    fields: dict[str, object] = dict(
        run_id=RUN,
        epoch=epoch,
        peer_id=peer,
        name=f"volunteer {peer[-2:]}",
        team="red" if peer[-1] in "02468" else "blue",
        claimed_samples=256,
        granted_samples=256,
        reason="",
        compute_s=12.5,
        timestamp=1_700_000_000.0 + epoch,
    )
    fields.update(changes)
    return LedgerEntry(**fields)  # type: ignore[arg-type]


def epoch_entries(epoch: int, peers: int = 4) -> list[LedgerEntry]:
    return [entry(epoch, f"{PEER}{index:02d}") for index in range(peers)]


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_ledger(folder: Path, key: Ed25519PrivateKey, epochs: int = 5, peers: int = 4) -> Path:
    with Ledger.open(folder, key, run_id=RUN) as ledger:
        for epoch in range(1, epochs + 1):
            ledger.commit_epoch(epoch_entries(epoch, peers))
    return folder


@pytest.fixture
def ledger_folder(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    """5 epochs of 4 peers: 20 entries, checkpoints at 4, 8, 12, 16 and 20 entries."""
    return write_ledger(tmp_path / "ledger", key)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_entries_are_canonical_json_lines_and_reject_unknown_or_mistyped_fields():
    record = entry(3, PEER, name="José 深度\nline\u2028sep", reason="", compute_s=1.0)
    data = record.canonical_bytes()
    assert b"\n" not in data and b" " not in data.replace("José 深度".encode(), b"")
    assert data == json.dumps(record.model_dump(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "深度".encode() in data  # UTF-8, not \u escapes
    assert list(json.loads(data)) == sorted(json.loads(data))
    with pytest.raises(ValueError):
        LedgerEntry.model_validate({**record.model_dump(), "bonus": 1})
    with pytest.raises(ValueError):
        LedgerEntry.model_validate({**record.model_dump(), "epoch": "3"})
    with pytest.raises(ValueError):
        LedgerEntry.model_validate({**record.model_dump(), "compute_s": float("nan")})
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()


def test_commit_epoch_writes_the_published_layout(ledger_folder: Path, key: Ed25519PrivateKey):
    files = {path.name for path in ledger_folder.iterdir()}
    assert {ENTRIES_FILE, CHECKPOINTS_FILE, PUBLIC_KEY_FILE, TOTALS_FILE, TEAMS_FILE, README_FILE} <= files
    assert not [name for name in files if name.endswith(".tmp")]
    assert (ledger_folder / PUBLIC_KEY_FILE).read_bytes() == public_key_pem(key.public_key())
    assert len(lines_of(ledger_folder / ENTRIES_FILE)) == 20
    checkpoints = [SignedCheckpoint.model_validate_json(line) for line in lines_of(ledger_folder / CHECKPOINTS_FILE)]
    assert [c.tree_size for c in checkpoints] == [4, 8, 12, 16, 20]
    assert all(c.key_id == key_fingerprint(key.public_key()) and c.run_id == RUN for c in checkpoints)
    readme = (ledger_folder / README_FILE).read_text().splitlines()
    assert len(readme) == 2 and "swarm ledger verify" in readme[1]
    totals = (ledger_folder / TOTALS_FILE).read_text().splitlines()
    assert totals[0] == "peer_id,name,team,claimed_samples,granted_samples,compute_s,epochs"
    assert totals[1] == f"{PEER}00,volunteer 00,red,1280,1280,62.500,5"
    teams = (ledger_folder / TEAMS_FILE).read_text().splitlines()
    assert teams[0] == "team,volunteers,claimed_samples,granted_samples,compute_s,epochs"
    assert sorted(teams[1:]) == ["blue,2,2560,2560,125.000,10", "red,2,2560,2560,125.000,10"]


def test_reopening_resumes_the_log_and_rebuilds_totals(ledger_folder: Path, key: Ed25519PrivateKey):
    (ledger_folder / TOTALS_FILE).unlink()
    with Ledger.open(ledger_folder, key, run_id=RUN) as ledger:
        assert (ledger.tree_size, ledger.last_epoch) == (20, 5)
        assert ledger.latest_checkpoint is not None and ledger.latest_checkpoint.tree_size == 20
        assert ledger.root_hash == ledger.latest_checkpoint.root_hash
        assert (ledger_folder / TOTALS_FILE).exists()
        ledger.commit_epoch(list(reversed(epoch_entries(6))))  # a batch is sorted for the caller
        assert ledger.totals.peers[f"{PEER}00"].epochs == 6
    report = verify_ledger(ledger_folder)
    assert report.ok, report.problem
    assert (report.entries, report.checkpoints) == (24, 6)


def test_writer_refuses_out_of_order_duplicate_and_foreign_entries(ledger_folder: Path, key: Ed25519PrivateKey):
    with Ledger.open(ledger_folder, key, run_id=RUN) as ledger:
        with pytest.raises(ValueError, match="one per peer per epoch"):
            ledger.append([entry(5, f"{PEER}03")])
        with pytest.raises(ValueError, match="one per peer per epoch"):
            ledger.append([entry(4, f"{PEER}99")])
        with pytest.raises(ValueError, match="one per peer per epoch"):
            ledger.append([entry(6, PEER), entry(6, PEER)])
        with pytest.raises(ValueError, match="run 'other'"):
            ledger.append([entry(6, PEER, run_id="other")])
        assert ledger.tree_size == 20
    assert verify_ledger(ledger_folder).ok


def test_a_ledger_opens_only_with_its_key_its_run_and_one_writer(ledger_folder: Path, key: Ed25519PrivateKey):
    with pytest.raises(LedgerError, match="original key"):
        Ledger.open(ledger_folder, Ed25519PrivateKey.generate(), run_id=RUN)
    with pytest.raises(LedgerError, match="belongs to run 'tiny'"):
        Ledger.open(ledger_folder, key, run_id="another-run")
    with Ledger.open(ledger_folder, key, run_id=RUN), pytest.raises(LedgerError, match="another process is writing"):
        Ledger.open(ledger_folder, key, run_id=RUN)
    Ledger.open(ledger_folder, key, run_id=RUN).close()  # the lock went with the first writer


def test_the_writer_refuses_to_extend_a_tampered_ledger(ledger_folder: Path, key: Ed25519PrivateKey):
    entries = ledger_folder / ENTRIES_FILE
    entries.write_bytes(entries.read_bytes().replace(b'"granted_samples":256', b'"granted_samples":999', 1))
    with pytest.raises(LedgerError, match="damaged.*no longer hash to the signed root"):
        Ledger.open(ledger_folder, key, run_id=RUN)


def test_signing_key_is_created_private_and_loaded_back(tmp_path: Path):
    path = tmp_path / "secrets" / "ledger_key.pem"
    key = load_or_create_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_signing_key(path)
    assert key_fingerprint(again.public_key()) == key_fingerprint(key.public_key())
    path.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGJ5dGVz\n-----END PRIVATE KEY-----\n")
    with pytest.raises(UsageError) as raised:
        load_or_create_signing_key(path)
    assert "c2VjcmV0" not in str(raised.value) and raised.value.__suppress_context__


def test_open_cuts_off_an_unfinished_epoch_and_a_partial_line(ledger_folder: Path, key: Ed25519PrivateKey):
    with (ledger_folder / ENTRIES_FILE).open("ab") as stream:  # epoch 6 half written, no checkpoint
        stream.write(b"".join(e.canonical_bytes() + b"\n" for e in epoch_entries(6)[:2]) + b'{"claimed_sa')
    with (ledger_folder / CHECKPOINTS_FILE).open("ab") as stream:
        stream.write(b'{"key_id":"0a0b')
    assert verify_ledger(ledger_folder).problem_kind == "checkpoint_truncated"
    with Ledger.open(ledger_folder, key, run_id=RUN) as ledger:
        assert (ledger.tree_size, ledger.last_epoch) == (20, 5)
        ledger.commit_epoch(epoch_entries(6))
    assert verify_ledger(ledger_folder).ok


CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys, time
    from swarm.ledger import Ledger, LedgerEntry, load_or_create_signing_key

    folder, key_path, die_between_entries_and_checkpoint = sys.argv[1], sys.argv[2], len(sys.argv) > 3
    ledger = Ledger.open(folder, load_or_create_signing_key(key_path), run_id="tiny")
    epoch = (ledger.last_epoch or 0) + 1
    while True:
        peers = 3 + epoch % 5
        ledger.append([
            LedgerEntry(run_id="tiny", epoch=epoch, peer_id=f"peer{index:03d}", name="n", team="t",
                        claimed_samples=100, granted_samples=100 - index, reason="" if index == 0 else "slow",
                        compute_s=1.25, timestamp=time.time())
            for index in range(peers)
        ])
        if die_between_entries_and_checkpoint:
            os.kill(os.getpid(), signal.SIGKILL)
        ledger.checkpoint()
        print(epoch, flush=True)
        epoch += 1
    """
)


def test_a_writer_killed_at_random_moments_leaves_a_ledger_that_verifies_and_continues(tmp_path: Path):
    script = tmp_path / "writer.py"
    script.write_text(CRASHING_WRITER)
    folder, key_path = tmp_path / "ledger", tmp_path / "key.pem"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    randomness = random.Random(6962)
    last_committed = 0
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, str(script), str(folder), str(key_path)], stdout=subprocess.PIPE, env=environment
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # the writer is running: kill it at a random moment of its loop
        assert first, "the writer died before committing an epoch"
        time.sleep(randomness.uniform(0, 0.15))
        child.send_signal(signal.SIGKILL)
        printed = first + child.stdout.read()
        child.wait()
        committed = int(printed.split()[-1])
        assert committed > last_committed
        with Ledger.open(folder, load_or_create_signing_key(key_path), run_id=RUN) as ledger:
            # Epoch `committed` returned before the kill; the next one may have been signed but not printed.
            assert ledger.last_epoch in (committed, committed + 1)
            last_committed = ledger.last_epoch
        report = verify_ledger(folder)
        assert report.ok, report.problem
    # And once exactly in the window the design is about: entries durable, checkpoint not written.
    subprocess.run([sys.executable, str(script), str(folder), str(key_path), "die"], env=environment, check=False)
    assert verify_ledger(folder).problem_kind == "entries_uncovered"
    with Ledger.open(folder, load_or_create_signing_key(key_path), run_id=RUN) as ledger:
        assert ledger.last_epoch == last_committed
        ledger.commit_epoch([entry(last_committed + 1, PEER, run_id=RUN)])
        last_committed += 1
    assert verify_ledger(folder).ok
    epochs = sorted({json.loads(line)["epoch"] for line in lines_of(folder / ENTRIES_FILE)})
    assert epochs == list(range(1, last_committed + 1)), "an epoch was lost or repeated across the restarts"


# ---------------------------------------------------------------------------------------------------------------
# Verification: what each kind of tampering is called


def sign(body: Checkpoint, key: Ed25519PrivateKey) -> SignedCheckpoint:
    return SignedCheckpoint(**body.model_dump(), signature=key.sign(body.canonical_bytes()).hex())


def test_a_clean_ledger_verifies(ledger_folder: Path, key: Ed25519PrivateKey):
    report = verify_ledger(ledger_folder, pinned_key=key.public_key())
    assert report.ok and report.problem is None
    assert (report.entries, report.checkpoints, report.tree_size, report.run_id) == (20, 5, 20, RUN)
    assert report.key_id == key_fingerprint(key.public_key())
    assert report.latest_checkpoint is not None and report.root_hash == report.latest_checkpoint.root_hash
    assert verify_ledger(ledger_folder / ENTRIES_FILE).ok  # a file of the folder names the folder


def test_an_empty_ledger_verifies(tmp_path: Path, key: Ed25519PrivateKey):
    Ledger.open(tmp_path / "empty", key, run_id=RUN).close()
    report = verify_ledger(tmp_path / "empty")
    assert report.ok and report.latest_checkpoint is None and "nothing signed yet" in report.summary()


def test_a_changed_byte_names_the_epoch_and_checkpoint_it_breaks(ledger_folder: Path):
    entries = ledger_folder / ENTRIES_FILE
    lines = lines_of(entries)
    lines[9] = lines[9].replace(b'"granted_samples":256', b'"granted_samples":257')  # line 10, epoch 3
    write_lines(entries, lines)
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "entry_changed"
    assert report.problem.startswith(
        "entries.jsonl lines 9-12 (run tiny, epoch 3): an entry among them was changed after it was signed: the root "
        "over the first 12 entries does not match checkpoint 3 (signed root"
    )
    assert report.entries == 12


def test_every_single_bit_flip_in_an_entry_is_caught(ledger_folder: Path):
    entries = ledger_folder / ENTRIES_FILE
    original = entries.read_bytes()
    start = original.index(b"\n", original.index(b"\n") + 1) + 1  # line 3
    end = original.index(b"\n", start)
    kinds = set()
    for position in range(start, end, 3):
        for bit in (0, 5):
            damaged = bytearray(original)
            damaged[position] ^= 1 << bit
            entries.write_bytes(bytes(damaged))
            report = verify_ledger(ledger_folder)
            assert not report.ok, f"flipping bit {bit} of byte {position} went unnoticed"
            assert str(report.problem).startswith(("entries.jsonl line ", "entries.jsonl lines "))
            kinds.add(report.problem_kind)
    assert "entry_changed" in kinds and "entry_invalid_json" in kinds


def test_a_deleted_entry_is_reported_as_a_deletion(ledger_folder: Path):
    lines = lines_of(ledger_folder / ENTRIES_FILE)
    del lines[5]  # line 6, epoch 2
    write_lines(ledger_folder / ENTRIES_FILE, lines)
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "entry_deleted"
    assert report.problem.startswith("entries.jsonl lines 5-8 (run tiny, epochs 2-3): an entry among them was deleted")
    assert "does not match checkpoint 2" in report.problem
    assert "the file holds 19 entries where checkpoint 5 signed 20" in report.problem


def test_deleted_trailing_entries_are_reported_as_missing(ledger_folder: Path):
    write_lines(ledger_folder / ENTRIES_FILE, lines_of(ledger_folder / ENTRIES_FILE)[:16])
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "entries_missing"
    assert "holds 16 entries and checkpoint 5 signed 20: the entries after line 16 were deleted" in report.problem


def test_reordered_entries_are_reported_as_out_of_order(ledger_folder: Path):
    lines = lines_of(ledger_folder / ENTRIES_FILE)
    lines[5], lines[6] = lines[6], lines[5]
    write_lines(ledger_folder / ENTRIES_FILE, lines)
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "entry_out_of_order"
    assert report.problem.startswith(f"entries.jsonl line 7 (run tiny, epoch 2, peer {PEER}01) is out of order")
    assert f"line 6 has epoch 2, peer {PEER}02" in report.problem


def test_an_inserted_or_repeated_entry_is_named(ledger_folder: Path):
    lines = lines_of(ledger_folder / ENTRIES_FILE)
    write_lines(ledger_folder / ENTRIES_FILE, lines[:9] + [entry(3, f"{PEER}00a").canonical_bytes()] + lines[9:])
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "entry_inserted" and report.problem.startswith(
        "entries.jsonl lines 9-12 (run tiny, epoch 3): an entry was inserted among them"
    )
    write_lines(ledger_folder / ENTRIES_FILE, lines[:9] + [lines[8]] + lines[9:])
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "entry_duplicate" and "line 10" in report.problem


def test_an_appended_entry_without_a_checkpoint_is_reported_as_uncovered(ledger_folder: Path):
    with (ledger_folder / ENTRIES_FILE).open("ab") as stream:
        stream.write(entry(6, PEER).canonical_bytes() + b"\n")
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "entries_uncovered"
    assert report.problem.startswith("entries.jsonl line 21 (run tiny, epoch 6")
    assert "not covered by any signed checkpoint (the newest, checkpoint 5, covers the first 20 entries)" in (
        report.problem
    )


def test_a_checkpoint_signed_by_another_key_is_named(ledger_folder: Path):
    path = ledger_folder / CHECKPOINTS_FILE
    lines = lines_of(path)
    forger = Ed25519PrivateKey.generate()
    original = SignedCheckpoint.model_validate_json(lines[2])
    body = Checkpoint(**{**original.model_dump(exclude={"signature"}), "key_id": key_fingerprint(forger.public_key())})
    lines[2] = sign(body, forger).canonical_bytes()
    write_lines(path, lines)
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "checkpoint_bad_signature"
    assert report.problem.startswith("checkpoint 3: signature does not verify with public_key.pem")
    assert "signed by another key" in report.problem


def test_a_truncated_checkpoint_is_named(ledger_folder: Path):
    path = ledger_folder / CHECKPOINTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "checkpoint_truncated"
    assert report.problem.startswith("checkpoint 5 (checkpoints.jsonl line 5) is cut short")
    path.write_bytes(data[:-40] + b"\n")
    assert verify_ledger(ledger_folder).problem_kind == "checkpoint_invalid"


def test_the_six_kinds_of_tampering_get_six_different_diagnoses(tmp_path: Path, key: Ed25519PrivateKey):
    def tampered(edit) -> str:  # type: ignore[no-untyped-def]
        folder = write_ledger(tmp_path / f"ledger{len(kinds)}", key)
        edit(folder)
        report = verify_ledger(folder)
        assert not report.ok
        return str(report.problem_kind)

    def change(folder: Path) -> None:
        lines = lines_of(folder / ENTRIES_FILE)
        lines[0] = lines[0].replace(b'"claimed_samples":256', b'"claimed_samples":512')
        write_lines(folder / ENTRIES_FILE, lines)

    def delete(folder: Path) -> None:
        write_lines(folder / ENTRIES_FILE, lines_of(folder / ENTRIES_FILE)[1:])

    def reorder(folder: Path) -> None:
        lines = lines_of(folder / ENTRIES_FILE)
        write_lines(folder / ENTRIES_FILE, [lines[1], lines[0]] + lines[2:])

    def append(folder: Path) -> None:
        with (folder / ENTRIES_FILE).open("ab") as stream:
            stream.write(entry(9, PEER).canonical_bytes() + b"\n")

    def resign(folder: Path) -> None:
        lines = lines_of(folder / CHECKPOINTS_FILE)
        body = Checkpoint(**SignedCheckpoint.model_validate_json(lines[0]).model_dump(exclude={"signature"}))
        lines[0] = sign(body, Ed25519PrivateKey.generate()).canonical_bytes()
        write_lines(folder / CHECKPOINTS_FILE, lines)

    def truncate(folder: Path) -> None:
        path = folder / CHECKPOINTS_FILE
        path.write_bytes(path.read_bytes()[:-10])

    kinds: list[str] = []
    for edit in (change, delete, reorder, append, resign, truncate):
        kinds.append(tampered(edit))
    assert len(set(kinds)) == 6, kinds


def test_non_canonical_and_malformed_lines_are_named(ledger_folder: Path):
    path = ledger_folder / ENTRIES_FILE
    lines = lines_of(path)
    write_lines(path, lines[:8] + [lines[8].replace(b'"epoch":3,', b'"epoch": 3,')] + lines[9:])
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "entry_not_canonical"
    assert report.problem.startswith("entries.jsonl line 9 (run tiny, epoch 3")
    assert "not canonical JSON" in report.problem
    write_lines(path, lines[:8] + [lines[8][:-5]] + lines[9:])
    assert verify_ledger(ledger_folder).problem == "entries.jsonl line 9 is not valid JSON"
    write_lines(path, lines[:8] + [lines[8].replace(b'"epoch":3', b'"epoch":"3"')] + lines[9:])
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "entry_invalid" and "epoch" in report.problem


def test_shrinking_checkpoints_and_an_unpinned_key_are_named(ledger_folder: Path, key: Ed25519PrivateKey):
    path = ledger_folder / CHECKPOINTS_FILE
    lines = lines_of(path)
    older = SignedCheckpoint.model_validate_json(lines[1])
    write_lines(path, lines + [sign(Checkpoint(**older.model_dump(exclude={"signature"})), key).canonical_bytes()])
    report = verify_ledger(ledger_folder)
    assert report.problem_kind == "checkpoint_size_decreased" and "checkpoint 6" in report.problem
    write_lines(path, lines)
    other = Ed25519PrivateKey.generate()
    report = verify_ledger(ledger_folder, pinned_key=key_fingerprint(other.public_key()))
    assert report.problem_kind == "public_key_not_pinned"
    assert verify_ledger(ledger_folder, pinned_key="sha256:" + key_fingerprint(key.public_key())).ok


def test_a_ledger_re_signed_by_an_impostor_fails_only_against_a_pinned_key(tmp_path: Path, key: Ed25519PrivateKey):
    impostor = Ed25519PrivateKey.generate()
    folder = write_ledger(tmp_path / "forged", impostor)
    assert verify_ledger(folder).ok
    pem = tmp_path / "coordinator.pem"
    pem.write_bytes(public_key_pem(key.public_key()))
    report = verify_ledger(folder, pinned_key=pem)
    assert report.problem_kind == "public_key_not_pinned"


def test_verify_waits_out_an_epoch_being_written(ledger_folder: Path, key: Ed25519PrivateKey):
    with Ledger.open(ledger_folder, key, run_id=RUN) as ledger:
        ledger.append(epoch_entries(6))  # entries durable, checkpoint not yet written
        signer = threading.Timer(0.05, ledger.checkpoint)
        signer.start()
        report = verify_ledger(ledger_folder)
        signer.join()
    assert report.ok, report.problem
    assert report.tree_size == 24


def test_unreadable_input_raises_a_source_error(tmp_path: Path, ledger_folder: Path):
    with pytest.raises(LedgerSourceError, match="does not exist"):
        verify_ledger(tmp_path / "missing")
    (ledger_folder / PUBLIC_KEY_FILE).unlink()
    with pytest.raises(LedgerSourceError, match="has no public_key.pem"):
        verify_ledger(ledger_folder)
    with pytest.raises(LedgerSourceError, match="cannot read the trusted checkpoint"):
        verify_ledger(ledger_folder, tmp_path / "saved.json")


# ---------------------------------------------------------------------------------------------------------------
# Over HTTP, against a saved checkpoint, and one entry at a time


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(folder: Path, handler: type[http.server.SimpleHTTPRequestHandler] = QuietHandler):
    """A real HTTP server on 127.0.0.1 over `folder`'s parent; yields the URL of `folder`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder.parent)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{folder.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def served(ledger_folder: Path):
    with serving(ledger_folder) as url:
        yield url


def test_a_ledger_verifies_over_http(served: str, ledger_folder: Path):
    report = verify_ledger(served)
    assert report.ok, report.problem
    assert report.entries == 20 and report.source == served
    assert verify_ledger(served + "/").ok
    lines = lines_of(ledger_folder / ENTRIES_FILE)
    write_lines(ledger_folder / ENTRIES_FILE, lines[:3] + lines[4:])
    assert verify_ledger(served).problem_kind == "entry_deleted"
    with pytest.raises(LedgerSourceError, match="HTTP 404"):
        verify_ledger(served.rsplit("/", 1)[0] + "/not-a-ledger")


def test_trusted_checkpoint_accepts_a_grown_log_and_rejects_a_rewritten_one(tmp_path: Path, key: Ed25519PrivateKey):
    folder = write_ledger(tmp_path / "ledger", key, epochs=3)
    saved = tmp_path / "saved.json"
    saved.write_text(latest_checkpoint(folder).model_dump_json())
    with Ledger.open(folder, key, run_id=RUN) as ledger:
        for epoch in (4, 5, 6):
            ledger.commit_epoch(epoch_entries(epoch, peers=epoch))
    report = verify_ledger(folder, saved)
    assert report.ok and report.trusted_tree_size == 12 and report.tree_size == 27

    rewritten = tmp_path / "rewritten"  # the coordinator itself re-signs a history with one grant changed
    with Ledger.open(rewritten, key, run_id=RUN) as ledger:
        ledger.commit_epoch([entry(1, f"{PEER}00", granted_samples=1)] + epoch_entries(1)[1:])
        for epoch in range(2, 7):
            ledger.commit_epoch(epoch_entries(epoch))
    assert verify_ledger(rewritten).ok, "on its own, a re-signed history looks fine"
    report = verify_ledger(rewritten, saved)
    assert report.problem_kind == "history_rewritten"
    assert "does not extend the trusted checkpoint: its first 12 entries now hash to" in report.problem

    truncated = write_ledger(tmp_path / "truncated", key, epochs=2)
    assert verify_ledger(truncated, saved).problem_kind == "trusted_ahead"
    other_key = write_ledger(tmp_path / "other-key", Ed25519PrivateKey.generate(), epochs=4)
    report = verify_ledger(other_key, saved)
    assert report.problem_kind == "trusted_bad_signature" and "the coordinator's key changed" in report.problem

    forged = json.loads(saved.read_text())  # the same key, a size edited in the saved file: not a key change
    forged["tree_size"] = 8
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    report = verify_ledger(folder, tmp_path / "forged.json")
    assert report.problem_kind == "trusted_bad_signature"
    assert "names this ledger's key" in report.problem and "the trusted file was altered" in report.problem
    assert "key changed" not in report.problem
    with Ledger.open(tmp_path / "another-run", Ed25519PrivateKey.generate(), run_id="another-run") as other:
        other.commit_epoch([])
    report = verify_ledger(tmp_path / "another-run", saved)  # another run's: said as such, not as a key change
    assert report.problem_kind == "trusted_run_mismatch", report.problem
    assert f"the trusted checkpoint is for run {RUN!r}, this ledger for run 'another-run'" == report.problem


def test_inclusion_proofs_of_every_entry_verify_and_tampered_ones_do_not(ledger_folder: Path, key: Ed25519PrivateKey):
    for index in range(20):
        proof = build_inclusion_proof(ledger_folder, index)
        assert proof.tree_size == 20 and proof.entry.epoch == index // 4 + 1
        report = verify_inclusion_proof(proof, ledger_folder)
        assert report.ok and report.subject == "proof", report.problem
    proof = build_inclusion_proof(ledger_folder, 6)
    changed = proof.model_copy(update={"entry": proof.entry.model_copy(update={"granted_samples": 9999})})
    assert verify_inclusion_proof(changed, pinned_key=key.public_key()).problem_kind == "proof_invalid"
    moved = proof.model_copy(update={"leaf_index": 7})
    assert verify_inclusion_proof(moved, pinned_key=key.public_key()).problem_kind == "proof_invalid"
    other = Ed25519PrivateKey.generate().public_key()
    assert verify_inclusion_proof(proof, pinned_key=other).problem_kind == "proof_bad_signature"
    with pytest.raises(LedgerSourceError, match="no entry 20"):
        build_inclusion_proof(ledger_folder, 20)


# ---------------------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def run_cli(runner: CliRunner, *arguments: str):  # type: ignore[no-untyped-def]
    root = typer.Typer()
    root.add_typer(ledger_app, name="ledger")
    return runner.invoke(root, ["ledger", *arguments])


def test_cli_verify_exit_codes_and_json(cli: CliRunner, ledger_folder: Path, tmp_path: Path):
    result = run_cli(cli, "verify", str(ledger_folder))
    assert result.exit_code == 0 and result.stdout.startswith("ok: ") and "20 entries" in result.stdout
    result = run_cli(cli, "verify", str(ledger_folder), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"] is True
    result = run_cli(cli, "verify", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "does not exist" in result.stderr and "Traceback" not in result.output
    result = run_cli(cli, "verify", "ftp://127.0.0.1/ledger")  # was read as the local folder ftp:/127.0.0.1/ledger
    assert result.exit_code == 2 and "not ftp://" in result.stderr and "http(s)://" in result.stderr, result.output
    lines = lines_of(ledger_folder / ENTRIES_FILE)
    write_lines(ledger_folder / ENTRIES_FILE, lines[1:])
    result = run_cli(cli, "verify", str(ledger_folder), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["problem_kind"] == "entry_deleted"
    assert "error: does not verify: entries.jsonl lines 1-4" in result.stderr


def test_cli_verify_says_when_the_unsigned_summaries_differ_from_the_verified_entries(cli: CliRunner,
                                                                                        ledger_folder: Path):
    """An edited totals.csv passed `verify` without a word, while a reader of the CSV took its numbers as verified."""
    result = run_cli(cli, "verify", str(ledger_folder))
    assert result.exit_code == 0 and "note:" not in result.stderr, result.stderr
    totals = (ledger_folder / TOTALS_FILE).read_text()
    header, first, *rest = totals.splitlines()
    fields = first.split(",")
    column = header.split(",").index("granted_samples")
    fields[column] = str(int(fields[column]) + 9000)
    (ledger_folder / TOTALS_FILE).write_text("\n".join([header, ",".join(fields), *rest]) + "\n")
    result = run_cli(cli, "verify", str(ledger_folder))
    assert result.exit_code == 0 and result.stdout.startswith("ok: "), result.output  # the signed log holds
    assert "note: totals.csv differs from the sums of the verified entries" in result.stderr, result.stderr
    assert "teams.csv" not in result.stderr


def test_cli_checkpoint_then_verify_trusted(cli: CliRunner, tmp_path: Path, key: Ed25519PrivateKey):
    folder = write_ledger(tmp_path / "ledger", key, epochs=2)
    result = run_cli(cli, "checkpoint", str(folder))
    assert result.exit_code == 0
    saved = tmp_path / "saved.json"
    saved.write_text(result.stdout)
    assert SignedCheckpoint.model_validate_json(result.stdout).tree_size == 8
    with Ledger.open(folder, key, run_id=RUN) as ledger:
        ledger.commit_epoch(epoch_entries(3))
    result = run_cli(cli, "verify", str(folder), "--trusted", str(saved))
    assert result.exit_code == 0 and "extends the trusted checkpoint of 8 entries" in result.stdout
    pem = tmp_path / "pinned.pem"
    pem.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    result = run_cli(cli, "verify", str(folder), "--public-key", str(pem))
    assert result.exit_code == 1 and "not the pinned key" in result.stderr


def test_cli_show_leaderboards(cli: CliRunner, tmp_path: Path, key: Ed25519PrivateKey):
    folder = tmp_path / "ledger"
    with Ledger.open(folder, key, run_id=RUN) as ledger:
        for epoch in (1, 2):
            ledger.commit_epoch(
                [
                    entry(epoch, "peer-a", name="ada", team="red", granted_samples=100, claimed_samples=100),
                    entry(
                        epoch,
                        "peer-b",
                        name="bob",
                        team="",
                        granted_samples=300,
                        claimed_samples=400,
                        reason="claimed faster than the recipe allows",
                    ),
                    entry(epoch, "peer-c", name="cy", team="red", granted_samples=50, claimed_samples=50),
                ]
            )
    result = run_cli(cli, "show", str(folder))
    assert result.exit_code == 0 and "ada" in result.stdout and "600" in result.stdout
    assert result.stdout.index("bob") < result.stdout.index("ada") < result.stdout.index("cy")
    rows = json.loads(run_cli(cli, "show", str(folder), "--json", "--top", "2").stdout)
    assert [row["name"] for row in rows] == ["bob", "ada"]
    assert rows[0] == {
        "peer_id": "peer-b",
        "name": "bob",
        "team": "",
        "claimed_samples": 800,
        "granted_samples": 600,
        "compute_s": 25.0,
        "epochs": 2,
    }
    teams = json.loads(run_cli(cli, "show", str(folder), "--by", "team", "--json").stdout)
    assert [(t["team"], t["volunteers"], t["granted_samples"], t["epochs"]) for t in teams] == [
        ("", 1, 600, 2),
        ("red", 2, 300, 4),
    ]
    csv_text = run_cli(cli, "show", str(folder), "--by", "team", "--csv").stdout
    assert csv_text == (folder / TEAMS_FILE).read_text()
    assert run_cli(cli, "show", str(folder), "--json", "--csv").exit_code == 2
    with Ledger.open(folder, key, run_id=RUN) as ledger:  # default names differ only at their end
        ledger.commit_epoch([entry(3, "peer-d", name="volunteer-3f9a2c", team="", granted_samples=10,
                                   claimed_samples=10)])
    assert "volunteer-3f9a2c" in run_cli(cli, "show", str(folder)).stdout  # was cut to "voluntee…" in a pipe


def test_cli_show_and_checkpoint_of_a_tampered_ledger_say_so(cli: CliRunner, ledger_folder: Path):
    lines = lines_of(ledger_folder / ENTRIES_FILE)
    write_lines(
        ledger_folder / ENTRIES_FILE, [lines[0].replace(b'"granted_samples":256', b'"granted_samples":999')] + lines[1:]
    )
    # a script that publishes `show --json` without looking at the exit code published the inflated totals
    for machine_readable in ("--json", "--csv"):
        result = run_cli(cli, "show", str(ledger_folder), machine_readable)
        assert result.exit_code == 1 and result.stdout == "", (machine_readable, result.stdout)
        assert result.stderr.startswith("error: does not verify, so no totals are printed: entries.jsonl lines 1-4")
    result = run_cli(cli, "show", str(ledger_folder))  # a person may look at what the readable entries claim
    assert result.exit_code == 1 and "these totals are not proven" in result.stderr
    assert result.stdout.lstrip().startswith("NOT VERIFIED")
    assert "volunteer 00" in result.stdout and f"{5 * 256 - 256 + 999:,}" in result.stdout
    result = run_cli(cli, "checkpoint", str(ledger_folder))
    assert result.exit_code == 1 and result.stdout == "" and "none of its checkpoints is worth saving" in result.stderr


def test_cli_prove_and_verify_the_proof_alone(cli: CliRunner, ledger_folder: Path, tmp_path: Path):
    proof_path = tmp_path / "proof.json"
    result = run_cli(cli, "prove", str(ledger_folder), "13", "--out", str(proof_path))
    assert result.exit_code == 0
    proof = InclusionProof.model_validate_json(proof_path.read_text())
    assert proof.leaf_index == 13 and proof.checkpoint.tree_size == 20 and len(proof.audit_path) == 5
    assert InclusionProof.model_validate_json(run_cli(cli, "prove", str(ledger_folder), "13").stdout) == proof
    public_key = str(ledger_folder / PUBLIC_KEY_FILE)
    result = run_cli(cli, "verify", "--proof", str(proof_path), "--public-key", public_key)
    assert result.exit_code == 0 and "proof of entry 13" in result.stdout
    assert run_cli(cli, "verify", str(ledger_folder), "--proof", str(proof_path)).exit_code == 0
    forged = json.loads(proof_path.read_text())
    forged["entry"]["granted_samples"] = 10**6
    proof_path.write_text(json.dumps(forged))
    result = run_cli(cli, "verify", "--proof", str(proof_path), "--public-key", public_key)
    assert result.exit_code == 1 and "does not hash up to the root" in result.stderr
    assert run_cli(cli, "prove", str(ledger_folder), "99").exit_code == 2
    assert run_cli(cli, "verify").exit_code == 2


def test_the_real_cli_exits_with_the_documented_codes_and_never_a_traceback(ledger_folder: Path, tmp_path: Path):
    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from swarm.ledger_cli import ledger_app; ledger_app()", *arguments],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = run("verify", str(ledger_folder))
    assert result.returncode == 0 and result.stdout.startswith("ok: "), result.stderr
    lines = lines_of(ledger_folder / ENTRIES_FILE)
    write_lines(ledger_folder / ENTRIES_FILE, lines[:10] + lines[11:])
    result = run("verify", str(ledger_folder))
    assert result.returncode == 1 and "was deleted" in result.stderr
    for arguments in (
        ["verify", str(tmp_path / "nowhere")],
        ["verify", "http://127.0.0.1:9/ledger"],
        ["verify", str(ledger_folder), "--trusted", str(tmp_path / "none.json")],
    ):
        result = run(*arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert result.stderr.startswith("error: ")
    for result in (run("verify", str(ledger_folder)), run("show", str(tmp_path / "nowhere"))):
        assert "Traceback" not in result.stderr + result.stdout


# ---------------------------------------------------------------------------------------------------------------
# Servers that do not hand over a ledger folder: exit code 2 (unusable input), never 1 (does not verify)


class CutShortHandler(QuietHandler):
    """Announces the whole file, sends half of it and closes: a proxy or server that died mid-transfer."""

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


class HangUpHandler(QuietHandler):
    """Reads the request and closes the connection without a word."""

    def do_GET(self) -> None:
        self.close_connection = True


class NotHttpHandler(QuietHandler):
    """Answers with something that is not HTTP (another service on the port)."""

    def do_GET(self) -> None:
        self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        self.close_connection = True


class CatchAllHandler(QuietHandler):
    """A single-page app or CDN: status 200 and the same HTML page for every path."""

    content_type = "text/html"

    def do_GET(self) -> None:
        body = b"<!doctype html>\n<html><body>Welcome to nginx! Page not found</body></html>\n"
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class UnlabelledPageHandler(CatchAllHandler):
    content_type = "application/octet-stream"


class LedgerAsHtmlHandler(QuietHandler):
    """Serves the real files, each labelled text/html (a misconfigured server)."""

    def guess_type(self, path) -> str:  # type: ignore[no-untyped-def, override]
        return "text/html"


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (CutShortHandler, r"the connection closed after (\d+) of (\d+) bytes, before the end of the file"),
        (HangUpHandler, "Remote end closed connection without response"),
        (NotHttpHandler, r"the answer is not valid HTTP \(BadStatusLine"),
    ],
    ids=["cut-short", "hang-up", "not-http"],
)
def test_a_server_that_fails_mid_answer_is_a_fetch_error_with_exit_code_2(
    cli: CliRunner, ledger_folder: Path, handler: type, reason: str
):
    """An IncompleteRead or BadStatusLine escaped as a traceback with exit code 1, the code of a tampered ledger."""
    with serving(ledger_folder, handler) as url:
        with pytest.raises(LedgerSourceError, match=f"^cannot fetch {url}/checkpoints.jsonl: {reason}"):
            verify_ledger(url)
        for command in ("verify", "show"):
            result = run_cli(cli, command, url)
            assert result.exit_code == 2, (command, result.exception, result.output)
            assert result.stderr.startswith(f"error: cannot fetch {url}/checkpoints.jsonl: ")
            assert result.stderr.count("\n") == 1 and result.stdout == ""
    if handler is CutShortHandler:
        received, size = map(int, re.search(reason, result.stderr).groups())  # type: ignore[union-attr]
        assert size == len((ledger_folder / CHECKPOINTS_FILE).read_bytes()) and received == size // 2


@pytest.mark.parametrize("handler", [CatchAllHandler, UnlabelledPageHandler], ids=["text-html", "unlabelled"])
def test_a_catch_all_web_page_is_not_a_ledger_folder_and_exits_2(cli: CliRunner, ledger_folder: Path, handler: type):
    with serving(ledger_folder, handler) as url:
        expected = (f"{url}: this URL does not serve a ledger folder (got an HTML page for checkpoints.jsonl): is "
                    "this the ledger folder's URL?")
        with pytest.raises(LedgerSourceError) as raised:
            verify_ledger(url)
        assert str(raised.value) == expected
        for command in ("verify", "show"):
            result = run_cli(cli, command, url)
            assert result.exit_code == 2 and result.stderr == f"error: {expected}\n" and result.stdout == ""


def test_a_real_ledger_labelled_html_still_verifies_and_real_tampering_still_exits_1(cli: CliRunner,
                                                                                     ledger_folder: Path):
    lines = lines_of(ledger_folder / ENTRIES_FILE)
    with serving(ledger_folder, LedgerAsHtmlHandler) as url:
        result = run_cli(cli, "verify", url)
        assert result.exit_code == 0 and result.stdout.startswith("ok: "), result.output
        write_lines(ledger_folder / ENTRIES_FILE, [lines[0].replace(b'"granted_samples":256', b'"granted_samples":999')]
                    + lines[1:])
        result = run_cli(cli, "verify", url)
        assert result.exit_code == 1 and "does not match checkpoint 1" in result.stderr, result.output
    with serving(ledger_folder) as url:
        write_lines(ledger_folder / ENTRIES_FILE, lines[:5] + [b"<entry/>"] + lines[6:])  # one line made markup
        result = run_cli(cli, "verify", url)
        assert result.exit_code == 1, result.output
        assert result.stderr == "error: does not verify: entries.jsonl line 6 is not valid JSON\n"
        (ledger_folder / PUBLIC_KEY_FILE).write_bytes(b"an edited key\n")
        result = run_cli(cli, "verify", url)
        assert result.exit_code == 1 and "public_key.pem is not a PEM public key" in result.stderr


def test_a_malformed_url_is_a_usage_error(cli: CliRunner):
    for url in ("http://[::1/ledger", "http://127.0.0.1:port/ledger"):
        result = run_cli(cli, "verify", url)
        assert result.exit_code == 2, (url, result.exception)
        assert result.stderr == f"error: {url.removesuffix('/ledger')}/ledger is not a valid URL: " + (
            "Invalid IPv6 URL\n" if "[" in url else "nonnumeric port: 'port'\n")


# ---------------------------------------------------------------------------------------------------------------
# Names chosen by volunteers: a ledger may hold anything (entries written before the records' schema checked them)

HOSTILE_NAMES = [
    "\x1b[31mRED\x1b[0m\rrewritten",
    '=HYPERLINK("http://evil.example","x")',
    "[link=https://e.example]hi[/link]",
    "\u202eevil",
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "-2+3",
    "\tindented",
]


def hostile_ledger(folder: Path, key: Ed25519PrivateKey) -> Path:
    with Ledger.open(folder, key, run_id=RUN) as ledger:
        ledger.commit_epoch([
            entry(1, f"{PEER}{index:02d}", name=name, team=name, granted_samples=100 + index)
            for index, name in enumerate(HOSTILE_NAMES)
        ])
    return folder


def test_hostile_names_keep_the_ledger_verifying_and_reach_the_csvs_as_inert_text(tmp_path: Path,
                                                                                   key: Ed25519PrivateKey):
    folder = hostile_ledger(tmp_path / "ledger", key)
    assert verify_ledger(folder).ok  # the signed entries hold the names exactly
    names = {LedgerEntry.model_validate_json(line).name for line in lines_of(folder / ENTRIES_FILE)}
    assert names == set(HOSTILE_NAMES)
    for summary, column in ((TOTALS_FILE, "name"), (TEAMS_FILE, "team")):
        data = (folder / summary).read_text()
        assert not any(char in data for char in "\x1b\r\t\u202e"), summary
        cells = [row[column] for row in csv.DictReader(data.splitlines())]
        assert len(cells) == len(HOSTILE_NAMES)
        assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))], cells
        assert "'=HYPERLINK(\"http://evil.example\",\"x\")" in cells and "'-2+3" in cells and "\\tindented" in cells
        assert "\\x1b[31mRED\\x1b[0m\\rrewritten" in cells and "\\u202eevil" in cells
    ordinary = write_ledger(tmp_path / "ordinary", key, epochs=1)
    assert (ordinary / TOTALS_FILE).read_text().splitlines()[1].split(",")[1] == "volunteer 00"


def test_cli_show_writes_hostile_names_as_inert_text(cli: CliRunner, tmp_path: Path, key: Ed25519PrivateKey):
    folder = hostile_ledger(tmp_path / "ledger", key)
    for by in ("peer", "team"):
        result = run_cli(cli, "show", str(folder), "--by", by)
        assert result.exit_code == 0, result.output
        assert not any(char in result.stdout for char in "\x1b\r\t\u202e"), repr(result.stdout)
        assert "\\x1b[31mRED" in result.stdout and "\\u202eevil" in result.stdout
        assert "[link=https://e.example]hi[/link]" in result.stdout  # shown, not read as rich markup
        assert run_cli(cli, "show", str(folder), "--by", by, "--csv").stdout == (
            folder / (TOTALS_FILE if by == "peer" else TEAMS_FILE)).read_text()
    result = run_cli(cli, "show", str(folder), "--json")
    assert not any(char in result.stdout for char in "\x1b\r\t\u202e")
    assert {row["name"] for row in json.loads(result.stdout)} == set(HOSTILE_NAMES)  # exact, for scripts


def test_cli_errors_quoting_a_tampered_run_id_show_its_escapes(cli: CliRunner, ledger_folder: Path):
    lines = lines_of(ledger_folder / ENTRIES_FILE)
    hostile = json.loads(lines[2])
    hostile["run_id"] = "\x1b]0;pwned\x07\x1b[2J"
    write_lines(ledger_folder / ENTRIES_FILE, lines[:2] + [canonical_json(hostile)] + lines[3:])
    result = run_cli(cli, "verify", str(ledger_folder))
    assert result.exit_code == 1 and "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "\\x1b]0;pwned\\x07" in result.stderr


def test_cli_verifies_a_ledger_against_a_published_versions_head(cli: CliRunner, tmp_path: Path,
                                                                  key: Ed25519PrivateKey):
    """A version carries the ledger's signed head (ledger/head.json), not a copy of the ledger: `--trusted` takes the
    version's folder, and the version given as the ledger is told apart from a broken ledger (exit 2, what to run)."""
    folder = write_ledger(tmp_path / "ledger", key, epochs=2)
    version = tmp_path / "checkpoints" / "epoch-000002"
    (version / "ledger").mkdir(parents=True)
    with Ledger.open(folder, key, run_id=RUN) as ledger:
        (version / "ledger" / HEAD_FILE).write_bytes(ledger.latest_checkpoint.canonical_bytes() + b"\n")
        (version / "ledger" / PUBLIC_KEY_FILE).write_bytes(ledger.public_key_pem)
        ledger.commit_epoch(epoch_entries(3))
    result = run_cli(cli, "verify", str(folder), "--trusted", str(version))
    assert result.exit_code == 0 and "extends the trusted checkpoint of 8 entries" in result.stdout, result.output
    for given in (version, version / "ledger"):
        result = run_cli(cli, "verify", str(given))
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "a published version's ledger head" in result.stderr
        assert f"swarm ledger verify <the run's ledger folder or URL> --trusted {version}" in result.stderr
    result = run_cli(cli, "verify", str(folder), "--trusted", str(tmp_path / "checkpoints"))
    assert result.exit_code == 2 and "without a version's ledger head" in result.stderr, result.output
    first = tmp_path / "checkpoints" / "epoch-000000"  # published before the first epoch was credited
    first.mkdir()
    (first / "swarm.json").write_text('{"ledger_root": null, "ledger_tree_size": 0}')
    result = run_cli(cli, "verify", str(folder), "--trusted", str(first))
    assert result.exit_code == 2 and "published before the ledger signed any credit" in result.stderr, result.output
    older = tmp_path / "checkpoints" / "epoch-000001"  # published before heads: a copy of the ledger as it was
    shutil.copytree(folder, older / "ledger")
    (older / "ledger" / CHECKPOINTS_FILE).write_bytes(lines_of(folder / CHECKPOINTS_FILE)[0] + b"\n{\"cut")
    result = run_cli(cli, "verify", str(folder), "--trusted", str(older))
    assert result.exit_code == 0 and "extends the trusted checkpoint of 4 entries" in result.stdout, result.output

    # a head that the ledger does not extend: the ledger was cut back to epoch 1 since
    write_lines(folder / ENTRIES_FILE, lines_of(folder / ENTRIES_FILE)[:4])
    write_lines(folder / CHECKPOINTS_FILE, lines_of(folder / CHECKPOINTS_FILE)[:1])
    result = run_cli(cli, "verify", str(folder), "--trusted", str(version))
    assert result.exit_code == 1 and "the trusted checkpoint signed 8 entries and the log now has 4" in result.stderr

    # a Hub repo's ledger/ holds the log and the version's head: the head is checked without --trusted
    (folder / HEAD_FILE).write_bytes((version / "ledger" / HEAD_FILE).read_bytes())
    result = run_cli(cli, "verify", str(folder))
    assert result.exit_code == 1 and "the version's ledger head (head.json) signed 8 entries" in result.stderr
    (folder / HEAD_FILE).write_bytes(lines_of(folder / CHECKPOINTS_FILE)[0] + b"\n")
    result = run_cli(cli, "verify", str(folder))
    assert result.exit_code == 0 and "extends the version's ledger head (head.json) of 4 entries" in result.stdout
    (folder / HEAD_FILE).write_text("not json\n")
    result = run_cli(cli, "verify", str(folder))
    assert result.exit_code == 2 and "head.json is not a signed checkpoint" in result.stderr, result.output
