"""The public credit ledger: an append-only log of credit entries that anyone can verify offline.

The coordinator writes one `LedgerEntry` per volunteer per swarm epoch and, after each epoch, a checkpoint
signed with its Ed25519 key: the size of the log and the root of an RFC 6962 Merkle tree over it, the
scheme of Certificate Transparency. An auditor who downloads the folder recomputes every root, checks every
signature and can prove, against a checkpoint saved earlier, that no signed entry was changed or removed
since (a consistency proof). A volunteer can show one entry is in the log with a short inclusion proof.

A ledger folder holds:

- `entries.jsonl`: one entry per line, canonical JSON (sorted keys, no spaces, UTF-8), ordered by epoch then
  peer id, at most one entry per peer per epoch;
- `checkpoints.jsonl`: every signed checkpoint, oldest first (all kept, so any two can be compared);
- `public_key.pem`: the coordinator's Ed25519 public key;
- `totals.csv`, `teams.csv`: sums per volunteer and per team (derived: rewritten within 5 s of a checkpoint). Names
  and teams are the volunteers' own words: in these files a control character is written as its escape (`\x1b`)
  and a cell starting with = + - @ gets a leading ' (a spreadsheet then shows it as text, not a formula);
- `README.txt`: what these are and how to verify them (`swarm ledger verify FOLDER`).

Writing, in the coordinator (one writer per folder; a second `Ledger.open` of the same folder is refused):

>>> import tempfile
>>> from swarm.ledger import Ledger, LedgerEntry, load_or_create_signing_key, verify_ledger
>>> folder = tempfile.mkdtemp()
>>> key = load_or_create_signing_key(f"{folder}/coordinator_key.pem")
>>> with Ledger.open(f"{folder}/ledger", key, run_id="tiny") as ledger:
...     checkpoint = ledger.commit_epoch([LedgerEntry(
...         run_id="tiny", epoch=1, peer_id="12D3KooWExample", name="ada", team="lovelace",
...         claimed_samples=256, granted_samples=256, reason="", compute_s=12.5, timestamp=1.7e9)])
>>> checkpoint.tree_size
1
>>> verify_ledger(f"{folder}/ledger").ok
True

Crash safety: entries are fsynced before the checkpoint that covers them is written, and `Ledger.open` cuts
off whatever follows the newest checkpoint (a partial line, or the entries of the epoch that was being
written). A coordinator killed at any moment therefore reopens a ledger that verifies, missing at most the
epoch it was writing; `Ledger.last_epoch` says where to resume (`Ledger.open` then logs "commit the epoch
after N again").

Reading: `verify_ledger(folder_or_url)` returns a `VerifyReport` whose `problem` names the first problem
precisely (the line, the entry, the checkpoint, the hashes). Verifying 100k entries under 1,000 checkpoints
takes about 3 s on 2 cores: the root at each checkpoint comes from the subtrees already hashed, in O(log n).
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarm import __version__
from swarm.errors import SwarmError, UsageError

logger = logging.getLogger(__name__)

ENTRIES_FILE = "entries.jsonl"
CHECKPOINTS_FILE = "checkpoints.jsonl"
PUBLIC_KEY_FILE = "public_key.pem"
TOTALS_FILE = "totals.csv"
TEAMS_FILE = "teams.csv"
README_FILE = "README.txt"
# In a published version's ledger/ folder: the signed checkpoint the version was published with (one line). A version
# carries this head, not a copy of the log: copies made the checkpoint folder grow with the square of the run's length.
HEAD_FILE = "head.json"

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 6962 2.1: the hash of an empty list is the hash of an empty string
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

# A reader that finds entries beyond the newest checkpoint (or a partial line) may have caught the coordinator
# between writing an epoch's entries and its checkpoint, a window of a few fsyncs: it re-reads before judging.
_SNAPSHOT_ATTEMPTS = 3
_SNAPSHOT_RETRY_DELAY_S = 0.2
_HTTP_TIMEOUT_S = 60.0
# totals.csv and teams.csv are rewritten at most this often (and on close). Replacing a file costs ~2 ms on ext4,
# which flushes it on rename: rewriting both every checkpoint took 3.7 of the 9.6 ms of a 100-entry epoch here.
_SUMMARIES_EVERY_S = 5.0
_HEX64 = r"^[0-9a-f]{64}$"


class LedgerError(SwarmError):
    """The ledger cannot be written or does not verify (exit code 1)."""


class LedgerSourceError(UsageError):
    """The ledger, key, checkpoint or proof named by the user cannot be read at all (exit code 2)."""


# ---------------------------------------------------------------------------------------------------------------
# Records


# Built once: json.dumps with these options builds an encoder per call, a third of the cost of verifying an entry.
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that the ledger hashes and signs: sorted keys, no spaces, UTF-8."""
    return _CANONICAL_ENCODER.encode(value).encode("utf-8")


class _Record(BaseModel):
    # Strict: a line whose "epoch" is "5" or true is not an entry. Frozen: a record's bytes never change.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))


class LedgerEntry(_Record):
    """Credit of one peer for one swarm epoch, as the coordinator granted it.

    >>> LedgerEntry(run_id="tiny", epoch=5, peer_id="12D3KooWExample", name="ada", team="", claimed_samples=512,
    ...             granted_samples=256, reason="claimed faster than the recipe allows", compute_s=30.0,
    ...             timestamp=1.7e9).canonical_bytes()[:40]
    b'{"claimed_samples":512,"compute_s":30.0,'
    """

    run_id: str = Field(min_length=1, description="The run's id (recipe `run.id`).")
    epoch: int = Field(ge=0, description="Swarm epoch the credit is for.")
    peer_id: str = Field(min_length=1, description="The volunteer's libp2p peer id.")
    name: str = Field(description="The volunteer's display name.")
    team: str = Field(description="The volunteer's team; empty for none.")
    claimed_samples: int = Field(ge=0, description="Samples the peer reported for this epoch.")
    granted_samples: int = Field(ge=0, description="Samples the coordinator credited.")
    reason: str = Field(description="Why less than the claim was granted; empty when fully granted.")
    compute_s: float = Field(ge=0, allow_inf_nan=False, description="Compute time credited, in seconds.")
    timestamp: float = Field(ge=0, allow_inf_nan=False, description="When the entry was written, unix seconds.")

    @property
    def order_key(self) -> tuple[int, str]:
        """Entries are sorted by this key, strictly: it also makes (epoch, peer) unique in a ledger."""
        return (self.epoch, self.peer_id)


class Checkpoint(_Record):
    """The signed part of a checkpoint: the first `tree_size` entries hash to `root_hash`."""

    tree_size: int = Field(ge=0)
    root_hash: str = Field(pattern=_HEX64, description="RFC 6962 Merkle tree hash, lowercase hex.")
    timestamp: float = Field(ge=0, allow_inf_nan=False, description="When it was signed, unix seconds.")
    run_id: str = Field(min_length=1)
    key_id: str = Field(pattern=_HEX64, description="`key_fingerprint` of the signing key.")


class SignedCheckpoint(Checkpoint):
    """A checkpoint and the coordinator's Ed25519 signature over the canonical JSON of its body (hex)."""

    signature: str = Field(pattern=r"^[0-9a-f]{128}$")

    def body_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json", exclude={"signature"}))

    def signature_verifies(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(bytes.fromhex(self.signature), self.body_bytes())
        except InvalidSignature:
            return False
        return True


class InclusionProof(_Record):
    """Proof that `entry` is leaf `leaf_index` of the log that `checkpoint` signed (`swarm ledger prove`)."""

    entry: LedgerEntry
    leaf_index: int = Field(ge=0, description="0-based: line N of entries.jsonl is leaf N-1.")
    tree_size: int = Field(ge=1)
    audit_path: list[Annotated[str, Field(pattern=_HEX64)]] = Field(
        description="RFC 6962 audit path, lowercase hex, leaf level first."
    )
    checkpoint: SignedCheckpoint


# ---------------------------------------------------------------------------------------------------------------
# Keys


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """The key id used in checkpoints: SHA-256 of the raw 32-byte public key, hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_public_key(pem: bytes, origin: str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key in PEM; ValueError says what `origin` holds instead."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{origin} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{origin} is a {type(key).__name__.lstrip('_')}, not an Ed25519 public key")
    return key


def load_or_create_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Load the coordinator's Ed25519 key from a PEM file, or create one there (mode 0600) if there is none.

    The key is the ledger's identity: auditors pin its public key, and a ledger can only be extended with the
    key that started it. Back the file up. It is never logged; only its public fingerprint is.
    """
    path = Path(path)
    if path.exists():
        if path.stat().st_mode & 0o077:
            logger.warning("Signing key %s is readable by other users; run `chmod 600 %s`", path, path)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # `from None`: the parser's own error is not shown, so no part of the file can reach a log.
            raise UsageError(
                f"{path} is not an unencrypted PEM private key; move it away to create a new one"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise UsageError(f"{path} is not an Ed25519 key; the ledger needs one (move it away to create one)")
        return key

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, pem)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        os.link(temporary, path)  # unlike a rename, never replaces a key another process created meanwhile
    except FileExistsError:
        return load_or_create_signing_key(path)
    finally:
        os.unlink(temporary)
    _fsync_directory(path.parent)
    logger.info(
        "Created a ledger signing key at %s (key id %s); back it up: without it this ledger cannot be extended",
        path,
        key_fingerprint(key.public_key())[:16],
    )
    return key


# ---------------------------------------------------------------------------------------------------------------
# RFC 6962 Merkle trees


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The RFC 6962 split point k of a tree of n > 1 leaves: the largest power of two smaller than n."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The root of a growing tree in O(log n) memory: one hash per perfect subtree on the tree's left edge.

    What the writer keeps: it needs the current root, never old proofs.
    """

    def __init__(self) -> None:
        self._subtrees: list[bytes] = []  # perfect subtrees, largest (leftmost) first
        self.size = 0

    def append(self, leaf: bytes) -> None:
        merged, size = leaf, self.size
        while size & 1:  # each trailing 1 bit of the size is a perfect subtree of the same height to merge with
            merged = node_hash(self._subtrees.pop(), merged)
            size >>= 1
        self._subtrees.append(merged)
        self.size += 1

    def root(self) -> bytes:
        if not self._subtrees:
            return EMPTY_ROOT
        result = self._subtrees[-1]
        for subtree in reversed(self._subtrees[:-1]):
            result = node_hash(subtree, result)
        return result


class MerkleTree:
    """Every perfect-subtree hash of a growing RFC 6962 tree (about 2 hashes per leaf, 64 bytes).

    Gives the root of any prefix, and inclusion and consistency proofs, in O(log n) hashes each; what the
    verifier uses to check every checkpoint of a long log in one pass.
    """

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        # _levels[h] concatenates the hashes of the complete subtrees of 2**h leaves, left to right.
        self._levels: list[bytearray] = [bytearray()]
        self.size = 0
        for leaf in leaves:
            self.append(leaf)

    def append(self, leaf: bytes) -> None:
        levels = self._levels
        levels[0] += leaf
        self.size += 1
        count, height, merged = self.size, 0, leaf
        while count % 2 == 0:  # the new node completed a pair: their parent is now a complete subtree too
            merged = node_hash(levels[height][-2 * HASH_SIZE : -HASH_SIZE], merged)
            height += 1
            if height == len(levels):
                levels.append(bytearray())
            levels[height] += merged
            count //= 2

    def root(self, size: int | None = None) -> bytes:
        """MTH(D[0:size]), the root of the tree of the first `size` leaves (all by default)."""
        size = self.size if size is None else size
        self._check_size(size)
        return self._range_hash(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 6962 2.1.1, the leaf's sibling first."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            split = start + _largest_power_of_two_below(end - start)
            if index < split:
                path.append(self._range_hash(split, end))
                end = split
            else:
                path.append(self._range_hash(start, split))
                start = split
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 6962 2.1.2; empty when old_size is 0 or equals new_size."""
        new_size = self.size if new_size is None else new_size
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"no consistency proof from {old_size} to {new_size} leaves")
        if old_size in (0, new_size):
            return []
        proof: list[bytes] = []
        start, end, remaining, old_is_whole_subtree = 0, new_size, old_size, True
        while remaining != end - start:  # SUBPROOF(remaining, D[start:end], old_is_whole_subtree)
            split_size = _largest_power_of_two_below(end - start)
            if remaining <= split_size:
                proof.append(self._range_hash(start + split_size, end))
                end = start + split_size
            else:
                proof.append(self._range_hash(start, start + split_size))
                start += split_size
                remaining -= split_size
                old_is_whole_subtree = False
        if not old_is_whole_subtree:
            proof.append(self._range_hash(start, end))
        proof.reverse()
        return proof

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"the tree has {self.size} leaves, not {size}")

    def _subtree(self, height: int, index: int) -> bytes:
        offset = index * HASH_SIZE
        return bytes(self._levels[height][offset : offset + HASH_SIZE])

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for the ranges the RFC's recursion visits, from at most log2(n) stored subtrees.

        Those ranges start at a multiple of a power of two at least as large as they are, so they split into
        complete, aligned subtrees, largest first, folded right to left like the RFC's split.
        """
        subtrees, position, length = [], start, end - start
        for height in range(length.bit_length() - 1, -1, -1):
            if length >> height & 1:
                if position % (1 << height):
                    raise ValueError(f"[{start}, {end}) is not a subtree range of an RFC 6962 tree")
                subtrees.append(self._subtree(height, position >> height))
                position += 1 << height
        result = subtrees[-1]
        for subtree in reversed(subtrees[:-1]):
            result = node_hash(subtree, result)
        return result


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 6962 2.1)."""
    tree = CompactRange()
    for leaf in leaves:
        tree.append(leaf)
    return tree.root()


def verify_inclusion(leaf: bytes, index: int, tree_size: int, audit_path: Sequence[bytes], root: bytes) -> bool:
    """Whether `audit_path` proves leaf hash `leaf` is leaf `index` of the tree with `root` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < tree_size:
        return False
    node_index, last_index, result = index, tree_size - 1, leaf
    for sibling in audit_path:
        if last_index == 0:
            return False
        if node_index & 1 or node_index == last_index:
            result = node_hash(sibling, result)
            while not node_index & 1 and node_index != 0:  # a right-edge node, without siblings up to here
                node_index >>= 1
                last_index >>= 1
        else:
            result = node_hash(result, sibling)
        node_index >>= 1
        last_index >>= 1
    return last_index == 0 and result == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Whether `proof` shows the tree (new_size, new_root) extends (old_size, old_root) (RFC 9162 2.1.4.2)."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:  # the empty tree is a prefix of every tree
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a complete subtree of the new one: its root starts the path
        path.insert(0, old_root)
    node_index, last_index = old_size - 1, new_size - 1
    while node_index & 1:
        node_index >>= 1
        last_index >>= 1
    old_result = new_result = path[0]
    for sibling in path[1:]:
        if last_index == 0:
            return False
        if node_index & 1 or node_index == last_index:
            old_result = node_hash(sibling, old_result)
            new_result = node_hash(sibling, new_result)
            while not node_index & 1 and node_index != 0:
                node_index >>= 1
                last_index >>= 1
        else:
            new_result = node_hash(new_result, sibling)
        node_index >>= 1
        last_index >>= 1
    return last_index == 0 and old_result == old_root and new_result == new_root


# ---------------------------------------------------------------------------------------------------------------
# Totals


@dataclass
class PeerTotal:
    peer_id: str
    name: str
    team: str
    claimed_samples: int = 0
    granted_samples: int = 0
    compute_s: float = 0.0
    epochs: int = 0


@dataclass
class TeamTotal:
    team: str
    volunteers: int = 0
    claimed_samples: int = 0
    granted_samples: int = 0
    compute_s: float = 0.0
    epochs: int = 0


@dataclass
class LedgerTotals:
    """Sums per volunteer (named as in their latest entry) and per team (as named in each entry)."""

    peers: dict[str, PeerTotal] = field(default_factory=dict)
    teams: dict[str, TeamTotal] = field(default_factory=dict)
    _team_members: dict[str, set[str]] = field(default_factory=dict, repr=False)

    def add(self, entry: LedgerEntry) -> None:
        peer = self.peers.get(entry.peer_id)
        if peer is None:
            peer = self.peers[entry.peer_id] = PeerTotal(entry.peer_id, entry.name, entry.team)
        peer.name, peer.team = entry.name, entry.team
        team = self.teams.get(entry.team)
        if team is None:
            team = self.teams[entry.team] = TeamTotal(entry.team)
            self._team_members[entry.team] = set()
        members = self._team_members[entry.team]
        if entry.peer_id not in members:
            members.add(entry.peer_id)
            team.volunteers += 1
        for total in (peer, team):
            total.claimed_samples += entry.claimed_samples
            total.granted_samples += entry.granted_samples
            total.compute_s += entry.compute_s
            total.epochs += 1

    def peer_leaderboard(self) -> list[PeerTotal]:
        return sorted(self.peers.values(), key=lambda p: (-p.granted_samples, -p.compute_s, p.peer_id))

    def team_leaderboard(self) -> list[TeamTotal]:
        return sorted(self.teams.values(), key=lambda t: (-t.granted_samples, -t.compute_s, t.team))

    def peers_csv(self) -> str:
        return _csv(self.peer_leaderboard(), PeerTotal)

    def teams_csv(self) -> str:
        return _csv(self.team_leaderboard(), TeamTotal)


def visible_text(text: str) -> str:
    r"""`text` with each character a terminal or editor would not show as itself written as its Python escape.

    Names and teams in a ledger are chosen by volunteers (and entries written before the records' schema checked
    them may hold anything): an ESC, a carriage return or a bidi override would recolour, overwrite or reorder what
    an auditor reads.

    >>> print(visible_text("ada\x1b[31m\u202e"))
    ada\x1b[31m\u202e
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


# OWASP's CSV injection advice: a spreadsheet evaluates a cell starting with one of these as a formula
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.3f}"
    if not isinstance(value, str):
        return value
    text = visible_text(value)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def _csv(rows: Sequence[PeerTotal | TeamTotal], row_type: type) -> str:
    columns = [column.name for column in fields(row_type)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(getattr(row, column)) for column in columns])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Writer


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomically(path: Path, data: bytes, durable: bool = False) -> None:
    """Readers see the old file or the new one, never half of one (a crash may leave a stray .tmp file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as stream:
        stream.write(data)
        if durable:
            stream.flush()
            os.fsync(stream.fileno())
    os.replace(temporary, path)
    if durable:
        _fsync_directory(path.parent)


def _write_durably(descriptor: int, data: bytes) -> None:
    """Append `data` and fsync; on failure (a full disk) cut it off again, so no half line is left to extend."""
    start = os.lseek(descriptor, 0, os.SEEK_END)
    try:
        remaining = memoryview(data)
        while remaining:
            remaining = remaining[os.write(descriptor, remaining) :]
        os.fsync(descriptor)
    except BaseException:
        os.ftruncate(descriptor, start)
        raise


def _readme(run_id: str) -> bytes:
    return (
        f"Credit ledger of swarm run {run_id!r}: entries.jsonl (one credit entry per volunteer per epoch), "
        "checkpoints.jsonl (RFC 6962 Merkle roots signed by the coordinator's Ed25519 key public_key.pem), "
        "totals.csv and teams.csv (sums per volunteer and per team).\n"
        "Verify it with `swarm ledger verify <this folder or its URL>`; save `swarm ledger checkpoint <it>` "
        "and later pass it as --trusted to prove the log only grew since.\n"
    ).encode()


class Ledger:
    """The coordinator's writer of a ledger folder: append each epoch's entries, then sign a checkpoint.

    >>> key = load_or_create_signing_key("coordinator/ledger_key.pem")      # doctest: +SKIP
    >>> ledger = Ledger.open("ledger", key, run_id="tiny")                   # doctest: +SKIP
    >>> next_epoch = (ledger.last_epoch or 0) + 1                            # doctest: +SKIP
    >>> ledger.commit_epoch(entries_of_the_epoch)                            # doctest: +SKIP
    >>> ledger.close()                                                       # doctest: +SKIP

    Entries must come in `LedgerEntry.order_key` order across calls (by epoch, then peer id; one per peer per
    epoch); within one `append` they are sorted for you. An epoch of 100 entries costs about 3 ms (two fsyncs,
    one signature; benchmarks/ledger.py), so signing every epoch is cheap. `open` replays the whole log to
    rebuild the root and totals, about 1.5 s per 100k entries. If it logs "commit the epoch after N again",
    the coordinator died mid-epoch: commit that epoch again. Call it from one thread.
    """

    def __init__(
        self,
        folder: Path,
        signing_key: Ed25519PrivateKey,
        run_id: str,
        entries_fd: int,
        checkpoints_fd: int,
    ) -> None:
        self.folder = folder
        self.run_id = run_id
        self.key_id = key_fingerprint(signing_key.public_key())
        self._signing_key = signing_key
        self._entries_fd = entries_fd
        self._checkpoints_fd = checkpoints_fd
        self._tree = CompactRange()
        self._totals = LedgerTotals()
        self._last_key: tuple[int, str] | None = None
        self._checkpoints: list[SignedCheckpoint] = []
        self._summaries_written_at = float("-inf")  # time.monotonic() of the last totals.csv rewrite
        self._summaries_stale = False

    @classmethod
    def open(cls, folder: str | Path, private_key: Ed25519PrivateKey, *, run_id: str) -> Ledger:
        """Create the ledger folder, or resume it after a stop or a crash (see the class docstring)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        key_id = key_fingerprint(private_key.public_key())
        public_key_path = folder / PUBLIC_KEY_FILE
        if public_key_path.exists():
            try:
                published_id = key_fingerprint(parse_public_key(public_key_path.read_bytes(), str(public_key_path)))
            except ValueError as error:
                raise LedgerError(f"{error}; restore the ledger folder from a backup") from None
            if published_id != key_id:
                raise LedgerError(
                    f"the ledger in {folder} is signed by key {published_id[:16]}, and this coordinator's key is "
                    f"{key_id[:16]}: start it with the ledger's original key, or give this run a new ledger folder"
                )
        else:
            _write_atomically(public_key_path, public_key_pem(private_key.public_key()), durable=True)

        import fcntl  # here, not at the top: auditors only read, and fcntl is POSIX-only

        # Unbuffered descriptors: a write either reaches the file whole or is cut off again (`_write_durably`).
        entries_fd = os.open(folder / ENTRIES_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(entries_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LedgerError(
                    f"another process is writing the ledger in {folder}; run one coordinator per ledger folder"
                ) from None
            checkpoints_fd = os.open(folder / CHECKPOINTS_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except BaseException:
            os.close(entries_fd)
            raise
        _fsync_directory(folder)
        ledger = cls(folder, private_key, run_id, entries_fd, checkpoints_fd)
        try:
            ledger._recover()
            ledger._write_summaries()
            _write_atomically(folder / README_FILE, _readme(run_id))
        except BaseException:
            ledger.close()
            raise
        return ledger

    # Properties the coordinator reads ------------------------------------------------------------------------

    @property
    def tree_size(self) -> int:
        """Entries written, signed or not."""
        return self._tree.size

    @property
    def root_hash(self) -> str:
        return self._tree.root().hex()

    @property
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._checkpoints[-1] if self._checkpoints else None

    @property
    def public_key_pem(self) -> bytes:
        return public_key_pem(self._signing_key.public_key())

    @property
    def last_epoch(self) -> int | None:
        """Epoch of the last entry written; the coordinator resumes after it."""
        return self._last_key[0] if self._last_key else None

    @property
    def totals(self) -> LedgerTotals:
        return self._totals

    # Writing ---------------------------------------------------------------------------------------------------

    def append(self, entries: Sequence[LedgerEntry]) -> None:
        """Write entries durably (fsync). They are covered, and so published as verified, by the next checkpoint."""
        batch = sorted(entries, key=lambda entry: entry.order_key)
        previous = self._last_key
        for entry in batch:
            if entry.run_id != self.run_id:
                raise ValueError(f"entry of run {entry.run_id!r} in the ledger of run {self.run_id!r}")
            if previous is not None and entry.order_key <= previous:
                raise ValueError(
                    f"entry for epoch {entry.epoch}, peer {entry.peer_id} comes after epoch {previous[0]}, peer "
                    f"{previous[1]}: entries go by epoch then peer id, one per peer per epoch"
                )
            previous = entry.order_key
        lines = [entry.canonical_bytes() for entry in batch]
        _write_durably(self._entries_fd, b"".join(line + b"\n" for line in lines))
        for entry, line in zip(batch, lines, strict=True):
            self._tree.append(leaf_hash(line))
            self._totals.add(entry)
        self._last_key = previous

    def checkpoint(self, timestamp: float | None = None) -> SignedCheckpoint:
        """Sign the current root and write the checkpoint durably; totals.csv follows within 5 s (or on close)."""
        body = Checkpoint(
            tree_size=self._tree.size,
            root_hash=self._tree.root().hex(),
            timestamp=time.time() if timestamp is None else timestamp,
            run_id=self.run_id,
            key_id=self.key_id,
        )
        signature = self._signing_key.sign(body.canonical_bytes())
        signed = SignedCheckpoint(**body.model_dump(), signature=signature.hex())
        _write_durably(self._checkpoints_fd, signed.canonical_bytes() + b"\n")
        self._checkpoints.append(signed)
        self._summaries_stale = True
        if time.monotonic() - self._summaries_written_at >= _SUMMARIES_EVERY_S:
            self._write_summaries()
        logger.debug(
            "Ledger checkpoint %d: %d entries, root %s", len(self._checkpoints), signed.tree_size, signed.root_hash
        )
        return signed

    def commit_epoch(self, entries: Sequence[LedgerEntry]) -> SignedCheckpoint:
        """`append(entries)` then `checkpoint()`: what the coordinator calls once per swarm epoch."""
        self.append(entries)
        return self.checkpoint()

    def close(self) -> None:
        if self._summaries_stale and self._entries_fd >= 0:
            self._write_summaries()
        for descriptor in (self._checkpoints_fd, self._entries_fd):  # closing the entries releases the lock
            if descriptor >= 0:
                os.close(descriptor)
        self._checkpoints_fd = self._entries_fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Internals -------------------------------------------------------------------------------------------------

    def _write_summaries(self) -> None:
        # Derived data, rebuilt from the log on every open: atomic, but not worth an fsync.
        _write_atomically(self.folder / TOTALS_FILE, self._totals.peers_csv().encode("utf-8"))
        _write_atomically(self.folder / TEAMS_FILE, self._totals.teams_csv().encode("utf-8"))
        self._summaries_written_at = time.monotonic()
        self._summaries_stale = False

    def _recover(self) -> None:
        """Load the checkpoints, replay the entries they cover, and cut off anything after the newest one."""
        public_key = self._signing_key.public_key()
        kept_bytes = 0
        with open(self.folder / CHECKPOINTS_FILE, "rb") as stream:
            lines = list(stream)
        for number, raw in enumerate(lines, 1):
            if not raw.endswith(b"\n"):
                break  # the checkpoint being written when the coordinator stopped: it never counted
            try:
                checkpoint = SignedCheckpoint.model_validate_json(raw)
            except ValidationError:
                raise LedgerError(
                    self._damaged(f"{CHECKPOINTS_FILE} line {number} is not a signed checkpoint")
                ) from None
            if checkpoint.run_id != self.run_id:
                raise LedgerError(
                    f"the ledger in {self.folder} belongs to run {checkpoint.run_id!r}, not {self.run_id!r}: "
                    "give each run its own ledger folder"
                )
            if not checkpoint.signature_verifies(public_key):
                raise LedgerError(self._damaged(f"checkpoint {number} is not signed by this key"))
            self._checkpoints.append(checkpoint)
            kept_bytes += len(raw)
        self._cut(self._checkpoints_fd, kept_bytes, CHECKPOINTS_FILE, "a partial checkpoint line")

        signed_size = self._checkpoints[-1].tree_size if self._checkpoints else 0
        pending = iter(self._checkpoints)
        checkpoint = next(pending, None)
        kept_bytes = 0
        while checkpoint is not None and checkpoint.tree_size == 0:
            if checkpoint.root_hash != EMPTY_ROOT.hex():
                raise LedgerError(self._damaged("a checkpoint of the empty log signs a root other than the empty one"))
            checkpoint = next(pending, None)
        with open(self.folder / ENTRIES_FILE, "rb") as stream:
            for number, raw in enumerate(stream, 1):
                if self._tree.size == signed_size or not raw.endswith(b"\n"):
                    break
                line = raw[:-1]
                try:
                    entry = LedgerEntry.model_validate_json(line)
                except ValidationError:
                    raise LedgerError(self._damaged(f"{ENTRIES_FILE} line {number} is not a ledger entry")) from None
                self._tree.append(leaf_hash(line))
                self._totals.add(entry)
                self._last_key = entry.order_key
                kept_bytes += len(raw)
                while checkpoint is not None and checkpoint.tree_size == self._tree.size:
                    if self._tree.root().hex() != checkpoint.root_hash:
                        raise LedgerError(
                            self._damaged(f"the first {checkpoint.tree_size} entries no longer hash to the signed root")
                        )
                    checkpoint = next(pending, None)
        if self._tree.size < signed_size:
            raise LedgerError(
                self._damaged(
                    f"{ENTRIES_FILE} holds {self._tree.size} complete entries and the newest checkpoint signed "
                    f"{signed_size}"
                )
            )
        dropped = self._cut(self._entries_fd, kept_bytes, ENTRIES_FILE, "entries of an unfinished epoch")
        logger.info(
            "Opened the ledger in %s: run %s, %d entries, %d checkpoints, key %s%s",
            self.folder,
            self.run_id,
            self._tree.size,
            len(self._checkpoints),
            self.key_id[:16],
            f"; last epoch {self.last_epoch}" if self.last_epoch is not None else "",
        )
        if dropped:
            logger.info(
                "The coordinator stopped while writing an epoch: commit the epoch after %s again",
                self.last_epoch if self.last_epoch is not None else "none (the first)",
            )

    def _cut(self, descriptor: int, size: int, name: str, what: str) -> int:
        """Truncate a file to its first `size` bytes, durably; returns how many lines went."""
        with open(self.folder / name, "rb") as stream:
            stream.seek(size)
            tail = stream.read()
        if not tail:
            return 0
        os.ftruncate(descriptor, size)
        os.fsync(descriptor)
        lines = tail.count(b"\n") + (0 if tail.endswith(b"\n") else 1)
        logger.info("Dropped %d line(s) of %s from %s (%d bytes)", lines, what, name, len(tail))
        return lines

    def _damaged(self, what: str) -> str:
        return (
            f"the ledger in {self.folder} is damaged: {what}. Complete lines are written durably, so this is "
            f"not a crash: run `swarm ledger verify {self.folder}` for details and restore it from a backup"
        )


# ---------------------------------------------------------------------------------------------------------------
# Reading a ledger folder or URL


@dataclass(frozen=True)
class _Snapshot:
    source: str
    public_key_pem: bytes
    checkpoints: bytes
    entries: bytes
    head: bytes | None = None  # HEAD_FILE, where the folder is a version's ledger (as a Hub repo holds it)


def _is_url(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def _read_from(source: str | Path, name: str) -> bytes:
    if _is_url(source):
        return _fetch(str(source), name)
    folder = _local_folder(source)
    path = folder / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise LedgerSourceError(
            f"{folder} has no {name}: not a ledger folder (it needs {ENTRIES_FILE}, {CHECKPOINTS_FILE} and "
            f"{PUBLIC_KEY_FILE})"
        ) from None
    except OSError as error:
        raise LedgerSourceError(f"cannot read {path}: {error.strerror}") from None


def _fetch(source: str, name: str) -> bytes:
    """One file of a ledger folder served at `source`. Whatever keeps it from arriving whole is a
    `LedgerSourceError` (exit code 2): exit code 1 says the ledger does not verify, and a flaky proxy is not
    tampering."""
    try:
        url = urllib.parse.urljoin(source if source.endswith("/") else f"{source}/", name)
        request = urllib.request.Request(url, headers={"User-Agent": f"swarm-ledger/{__version__}"})
        with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response:
            body = response.read()
            content_type = response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        raise LedgerSourceError(f"{url}: HTTP {error.code} {error.reason}; is this the ledger folder's URL?") from None
    except http.client.IncompleteRead as error:  # the server announced more bytes than it sent
        received = len(error.partial)
        size = f"{received} of {received + error.expected}" if error.expected is not None else f"{received}"
        raise LedgerSourceError(f"cannot fetch {url}: the connection closed after {size} bytes, before the end of "
                                "the file; try again (a server or proxy cut the transfer short)") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise LedgerSourceError(f"cannot fetch {url}: {reason or type(error).__name__}") from None
    except (ValueError, http.client.InvalidURL) as error:  # a malformed URL: "http://[::1", "http://host:port"
        raise LedgerSourceError(f"{source} is not a valid URL: {error}") from None
    except http.client.HTTPException as error:  # not OSError: a status line or header that is not HTTP, ...
        detail = visible_text(str(error).strip())  # BadStatusLine quotes the line it got, "\r\n" included
        raise LedgerSourceError(f"cannot fetch {url}: the answer is not valid HTTP ({type(error).__name__}"
                                f"{f': {detail}' if detail else ''})") from None
    if _is_web_page(body, content_type):
        raise LedgerSourceError(f"{source}: this URL does not serve a ledger folder (got an HTML page for {name}): "
                                "is this the ledger folder's URL?")
    return body


def _is_web_page(body: bytes, content_type: str) -> bool:
    """A body that is plainly a web page, not a ledger file: what a catch-all server (a single-page app, a CDN's
    error page) answers with status 200 for every path. No ledger file starts with `<`; a real ledger file that a
    misconfigured server labels text/html still starts with `{` (JSON lines), `-` (PEM) or is empty."""
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if start == b"<":
        return True
    return content_type in ("text/html", "application/xhtml+xml") and start not in (b"{", b"-", b"")


def _local_folder(source: str | Path) -> Path:
    if isinstance(source, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        raise LedgerSourceError(f"{source}: a ledger is read from a folder or an http(s):// URL, not "
                                f"{source.split('://')[0]}://")
    path = Path(source)
    if path.is_file() and path.name in (ENTRIES_FILE, CHECKPOINTS_FILE, PUBLIC_KEY_FILE):
        return path.parent
    if not path.exists():
        raise LedgerSourceError(f"no ledger at {path}: the folder does not exist")
    if not path.is_dir():
        raise LedgerSourceError(f"{path} is a file; pass the ledger folder (or its URL)")
    if not (path / ENTRIES_FILE).exists() and (path / "ledger" / ENTRIES_FILE).exists():
        return path / "ledger"  # a run's or demo's output folder: the ledger sits next to the checkpoints
    if not (path / ENTRIES_FILE).exists():
        for head_folder in (path, path / "ledger"):
            if (head_folder / HEAD_FILE).is_file():
                raise LedgerSourceError(_version_head_hint(path, head_folder))
    return path


def _version_head_hint(given: Path, head_folder: Path) -> str:
    version = head_folder.parent if head_folder.name == "ledger" else head_folder
    return (
        f"{given} is a published version's ledger head ({head_folder / HEAD_FILE}: the signed checkpoint the version "
        f"was published with), not a ledger: verify the run's ledger against it with `swarm ledger verify <the run's "
        f"ledger folder or URL> --trusted {version}`"
    )


def _looks_mid_write(checkpoints: bytes, entries: bytes) -> bool:
    """Whether a snapshot may have caught the writer between an epoch's entries and its checkpoint."""
    if (checkpoints and not checkpoints.endswith(b"\n")) or (entries and not entries.endswith(b"\n")):
        return True
    signed_size = 0
    if checkpoints:
        try:
            signed_size = int(json.loads(checkpoints[checkpoints.rstrip(b"\n").rfind(b"\n") + 1 :])["tree_size"])
        except (ValueError, KeyError, TypeError):
            return False
    return entries.count(b"\n") > signed_size


def _read_snapshot(source: str | Path) -> _Snapshot:
    for attempt in range(_SNAPSHOT_ATTEMPTS):
        # Checkpoints before entries: every entry a checkpoint covers was durable before it was written.
        checkpoints = _read_from(source, CHECKPOINTS_FILE)
        entries = _read_from(source, ENTRIES_FILE)
        if attempt == _SNAPSHOT_ATTEMPTS - 1 or not _looks_mid_write(checkpoints, entries):
            break
        time.sleep(_SNAPSHOT_RETRY_DELAY_S)
    return _Snapshot(str(source), _read_from(source, PUBLIC_KEY_FILE), checkpoints, entries,
                     _read_if_there(source, HEAD_FILE))


def _read_if_there(source: str | Path, name: str) -> bytes | None:
    """A file that a ledger folder may hold; None when it does not (or it cannot be read: the caller does without)."""
    if not _is_url(source):
        try:
            return (_local_folder(source) / name).read_bytes()
        except OSError:
            return None
    try:
        return _fetch(str(source), name)
    except LedgerSourceError:
        return None


def export_signed_ledger(folder: str | Path, target: str | Path) -> SignedCheckpoint | None:
    """Copy a ledger folder into `target` as of its newest checkpoint, consistently while its coordinator writes: the
    checkpoints, the entries the newest one covers, the public key, a README, and totals recomputed from those entries
    (the folder's own CSVs may lag the checkpoint by 5 s). Streams the entries: memory stays flat for any size. A
    version uploaded to a Hub repo carries this as `ledger/`, next to its head. Returns the newest checkpoint (None
    before the first); raises `LedgerSourceError` if the folder is not a ledger."""
    folder, target = _local_folder(folder), Path(target)
    checkpoints = _read_from(folder, CHECKPOINTS_FILE)  # first: every entry it covers was durable before it
    public_key = _read_from(folder, PUBLIC_KEY_FILE)
    lines, complete = _split_lines(checkpoints)
    if not complete:
        lines.pop()  # being written
    newest = _parse_head(lines[-1], str(folder / CHECKPOINTS_FILE)) if lines else None
    signed_size = newest.tree_size if newest is not None else 0
    target.mkdir(parents=True, exist_ok=True)
    totals = LedgerTotals()
    try:
        with open(folder / ENTRIES_FILE, "rb") as source, open(target / ENTRIES_FILE, "wb") as copy:
            for _, line in zip(range(signed_size), source):
                copy.write(line)
                try:
                    totals.add(LedgerEntry.model_validate_json(line))
                except ValidationError:
                    continue  # the verifier names it; the summaries are not signed
    except OSError as error:
        raise LedgerSourceError(f"cannot copy {folder / ENTRIES_FILE}: {error.strerror or error}") from None
    (target / CHECKPOINTS_FILE).write_bytes(b"".join(line + b"\n" for line in lines))
    (target / PUBLIC_KEY_FILE).write_bytes(public_key)
    (target / README_FILE).write_bytes(_readme(newest.run_id if newest is not None else "?"))
    (target / TOTALS_FILE).write_text(totals.peers_csv(), encoding="utf-8")
    (target / TEAMS_FILE).write_text(totals.teams_csv(), encoding="utf-8")
    return newest


def _split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """Lines of a JSON-lines file and whether the last one is complete (ends with a newline)."""
    if not data:
        return [], True
    lines = data.split(b"\n")
    complete = lines[-1] == b""
    if complete:
        lines.pop()
    return lines, complete


# ---------------------------------------------------------------------------------------------------------------
# Verification

ProblemKind = Literal[
    "public_key_invalid",
    "public_key_not_pinned",
    "checkpoint_truncated",
    "checkpoint_invalid",
    "checkpoint_not_canonical",
    "checkpoint_run_mismatch",
    "checkpoint_bad_signature",
    "checkpoint_key_mismatch",
    "checkpoint_size_decreased",
    "checkpoints_inconsistent",
    "entry_truncated",
    "entry_invalid_json",
    "entry_invalid",
    "entry_not_canonical",
    "entry_run_mismatch",
    "entry_out_of_order",
    "entry_duplicate",
    "entry_changed",
    "entry_deleted",
    "entry_inserted",
    "entries_missing",
    "entries_uncovered",
    "trusted_bad_signature",
    "trusted_run_mismatch",
    "trusted_ahead",
    "history_rewritten",
    "proof_invalid",
    "proof_bad_signature",
]


class VerifyReport(BaseModel):
    """What `verify_ledger` found: `ok`, or the first problem in words (`problem`) and as a code (`problem_kind`)."""

    ok: bool
    source: str
    subject: Literal["ledger", "proof"] = "ledger"
    problem: str | None = None
    problem_kind: ProblemKind | None = None
    run_id: str | None = None
    entries: int = Field(0, description="Entries checked before the first problem (all of them when ok).")
    checkpoints: int = 0
    tree_size: int = 0
    root_hash: str | None = None
    key_id: str | None = None
    latest_checkpoint: SignedCheckpoint | None = None
    trusted_tree_size: int | None = Field(
        None, description="Size of the trusted checkpoint the log was proven to extend."
    )
    trusted_from: Literal["given", "version head"] | None = Field(
        None, description=f"Where that checkpoint came from: --trusted, or the folder's {HEAD_FILE} (a version's)."
    )

    def summary(self) -> str:
        if not self.ok:
            return f"{self.source}: {self.problem}"
        if self.subject == "proof":
            return (
                f"{self.source} holds: the entry is in the log of {self.tree_size} entries of run {self.run_id} "
                f"whose root {self.root_hash} is signed by key {self.key_id}"
            )
        if self.latest_checkpoint is None:
            return f"{self.source}: an empty ledger, nothing signed yet"
        trusted = ""
        if self.trusted_tree_size is not None:
            trusted = f"; it extends {_trusted_name(self.trusted_from)} of {self.trusted_tree_size} entries"
        return (
            f"{self.source}: ledger of run {self.run_id} verifies: {self.entries} entries, {self.checkpoints} "
            f"signed checkpoints, root {self.root_hash} signed by key {self.key_id}{trusted}"
        )


def _trusted_name(trusted_from: str | None) -> str:
    """How messages name the checkpoint a log must extend: given with --trusted, or a version's ledger head."""
    return f"the version's ledger head ({HEAD_FILE})" if trusted_from == "version head" else "the trusted checkpoint"


class _Problem(Exception):
    def __init__(self, kind: ProblemKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class LedgerAudit:
    """A verification's report, with the totals of the entries read (all readable ones if it failed)."""

    report: VerifyReport
    totals: LedgerTotals


def _short(value: str, length: int = 16) -> str:
    return value if len(value) <= length else f"{value[:length]}..."


def _describe(entry: LedgerEntry | None) -> str:
    # The whole peer id: ids share their first characters ("12D3KooW..."), so a prefix may name two peers.
    if entry is None:
        return ""
    return f" (run {visible_text(entry.run_id)}, epoch {entry.epoch}, peer {visible_text(entry.peer_id)})"


def _describe_window(first: LedgerEntry | None, last: LedgerEntry | None) -> str:
    if first is None or last is None:
        return ""
    epochs = f"epoch {first.epoch}" if first.epoch == last.epoch else f"epochs {first.epoch}-{last.epoch}"
    return f" (run {visible_text(first.run_id)}, {epochs})"


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def _validation_detail(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


class _Verification:
    """One pass over a snapshot; raises `_Problem` at the first problem, in file order."""

    def __init__(
        self, snapshot: _Snapshot, pinned_id: str | None, trusted: SignedCheckpoint | None, count_totals: bool = False,
        trusted_from: Literal["given", "version head"] = "given",
    ) -> None:
        self.snapshot = snapshot
        self.count_totals = count_totals
        self.pinned_id = pinned_id
        self.trusted = trusted
        self.trusted_from = trusted_from
        self.trusted_name = _trusted_name(trusted_from)
        self.public_key: Ed25519PublicKey | None = None
        self.key_id: str | None = None
        self.checkpoints: list[SignedCheckpoint] = []
        self.tree = MerkleTree()
        self.totals = LedgerTotals()
        self.run_id: str | None = None

    def run(self) -> VerifyReport:
        self._check_public_key()
        self._check_checkpoints()
        self._check_entries()
        self._check_consistency()
        self._check_trusted()
        latest = self.checkpoints[-1] if self.checkpoints else None
        return VerifyReport(
            ok=True,
            source=self.snapshot.source,
            run_id=self.run_id,
            entries=self.tree.size,
            checkpoints=len(self.checkpoints),
            tree_size=self.tree.size,
            root_hash=self.tree.root().hex(),
            key_id=self.key_id,
            latest_checkpoint=latest,
            trusted_tree_size=self.trusted.tree_size if self.trusted else None,
            trusted_from=self.trusted_from if self.trusted else None,
        )

    def _check_public_key(self) -> None:
        try:
            self.public_key = parse_public_key(self.snapshot.public_key_pem, PUBLIC_KEY_FILE)
        except ValueError as error:
            raise _Problem("public_key_invalid", str(error)) from None
        self.key_id = key_fingerprint(self.public_key)
        if self.pinned_id is not None and self.key_id != self.pinned_id:
            raise _Problem(
                "public_key_not_pinned",
                f"{PUBLIC_KEY_FILE} is key {_short(self.key_id)}, not the pinned key {_short(self.pinned_id)}: "
                "this ledger is signed by another coordinator key",
            )

    def _check_checkpoints(self) -> None:
        assert self.public_key is not None
        lines, complete = _split_lines(self.snapshot.checkpoints)
        for number, line in enumerate(lines, 1):
            where = f"checkpoint {number} ({CHECKPOINTS_FILE} line {number})"
            if number == len(lines) and not complete:
                raise _Problem(
                    "checkpoint_truncated", f"{where} is cut short (no newline at the end): the file was truncated"
                )
            try:
                checkpoint = SignedCheckpoint.model_validate_json(line)
            except ValidationError as error:
                if error.errors()[0]["type"] == "json_invalid":
                    raise _Problem("checkpoint_invalid", f"{where} is not valid JSON") from None
                raise _Problem(
                    "checkpoint_invalid", f"{where} is not a signed checkpoint ({_validation_detail(error)})"
                ) from None
            if checkpoint.canonical_bytes() != line:
                raise _Problem(
                    "checkpoint_not_canonical", f"{where} is not canonical JSON (sorted keys, no spaces, UTF-8)"
                )
            if self.run_id is None:
                self.run_id = checkpoint.run_id
            elif checkpoint.run_id != self.run_id:
                raise _Problem(
                    "checkpoint_run_mismatch",
                    f"{where} is for run {checkpoint.run_id!r}, and checkpoint 1 for run {self.run_id!r}",
                )
            if not checkpoint.signature_verifies(self.public_key):
                other_key = (
                    f"; it names key {_short(checkpoint.key_id)}, so it was signed by another key"
                    if checkpoint.key_id != self.key_id
                    else ""
                )
                raise _Problem(
                    "checkpoint_bad_signature",
                    f"checkpoint {number}: signature does not verify with {PUBLIC_KEY_FILE} (key "
                    f"{_short(self.key_id or '')}){other_key}",
                )
            if checkpoint.key_id != self.key_id:
                raise _Problem(
                    "checkpoint_key_mismatch",
                    f"{where} names key {_short(checkpoint.key_id)} but is signed with {PUBLIC_KEY_FILE} "
                    f"(key {_short(self.key_id or '')})",
                )
            if self.checkpoints and checkpoint.tree_size < self.checkpoints[-1].tree_size:
                raise _Problem(
                    "checkpoint_size_decreased",
                    f"{where} signs {_plural(checkpoint.tree_size, 'entry', 'entries')}, fewer than "
                    f"checkpoint {number - 1} ({self.checkpoints[-1].tree_size}): a log only grows",
                )
            self.checkpoints.append(checkpoint)

    def _check_entries(self) -> None:
        lines, complete = _split_lines(self.snapshot.entries)
        checkpoints = self.checkpoints
        signed_size = checkpoints[-1].tree_size if checkpoints else 0
        next_checkpoint = 0  # index of the first checkpoint whose root is still to be checked
        window_first: LedgerEntry | None = None  # first entry after the last checkpoint that matched
        previous: LedgerEntry | None = None
        while next_checkpoint < len(checkpoints) and checkpoints[next_checkpoint].tree_size == 0:
            self._check_root(next_checkpoint, None, None, len(lines))
            next_checkpoint += 1
        for number, line in enumerate(lines, 1):
            if number > signed_size:
                self._report_uncovered(number, line, len(lines) - signed_size)
            if number == len(lines) and not complete:
                raise _Problem("entry_truncated", f"{ENTRIES_FILE} line {number} is cut short (no newline at the end)")
            entry = self._parse_entry(number, line)
            if entry.run_id != self.run_id:
                raise _Problem(
                    "entry_run_mismatch",
                    f"{ENTRIES_FILE} line {number}{_describe(entry)} is for run {entry.run_id!r}; the checkpoints "
                    f"are for run {self.run_id!r}",
                )
            if previous is not None and entry.order_key <= previous.order_key:
                if entry.order_key == previous.order_key:
                    raise _Problem(
                        "entry_duplicate",
                        f"{ENTRIES_FILE} line {number}{_describe(entry)} repeats the entry of line {number - 1}: "
                        "one entry per peer per epoch",
                    )
                raise _Problem(
                    "entry_out_of_order",
                    f"{ENTRIES_FILE} line {number}{_describe(entry)} is out of order: line {number - 1} has epoch "
                    f"{previous.epoch}, peer {previous.peer_id}, and entries go by epoch then peer id, so "
                    "entries were reordered or moved",
                )
            previous = entry
            if window_first is None:
                window_first = entry
            self.tree.append(leaf_hash(line))
            if self.count_totals:
                self.totals.add(entry)
            while next_checkpoint < len(checkpoints) and checkpoints[next_checkpoint].tree_size == number:
                self._check_root(next_checkpoint, window_first, entry, len(lines))
                next_checkpoint += 1
                window_first = None
        if next_checkpoint < len(checkpoints):
            matched = checkpoints[next_checkpoint - 1].tree_size if next_checkpoint else 0
            raise _Problem(
                "entries_missing",
                f"{ENTRIES_FILE} holds {_plural(len(lines), 'entry', 'entries')} and checkpoint {len(checkpoints)} "
                f"signed {signed_size}: the entries after line {matched} were deleted or the file was cut short "
                f"(checkpoint {next_checkpoint + 1} is the first to miss them)",
            )

    def _parse_entry(self, number: int, line: bytes) -> LedgerEntry:
        try:
            entry = LedgerEntry.model_validate_json(line)
        except ValidationError as error:
            if error.errors()[0]["type"] == "json_invalid":
                raise _Problem("entry_invalid_json", f"{ENTRIES_FILE} line {number} is not valid JSON") from None
            raise _Problem(
                "entry_invalid", f"{ENTRIES_FILE} line {number} is not a ledger entry ({_validation_detail(error)})"
            ) from None
        try:
            canonical = entry.canonical_bytes() == line
        except UnicodeEncodeError:
            canonical = False
        if not canonical:
            raise _Problem(
                "entry_not_canonical",
                f"{ENTRIES_FILE} line {number}{_describe(entry)} is not canonical JSON (sorted keys, no spaces, "
                "UTF-8, numbers as Python writes them)",
            )
        return entry

    def _check_root(
        self, index: int, window_first: LedgerEntry | None, window_last: LedgerEntry | None, line_count: int
    ) -> None:
        checkpoint = self.checkpoints[index]
        recomputed = self.tree.root().hex()
        if recomputed == checkpoint.root_hash:
            return
        size = checkpoint.tree_size
        first_line = (self.checkpoints[index - 1].tree_size if index else 0) + 1
        # The roots say which checkpoint's window broke, not which line in it: name the window, not one line of it.
        lines = f"line {size}" if first_line == size else f"lines {first_line}-{size}"
        where = f"{ENTRIES_FILE} {lines}{_describe_window(window_first, window_last)}"
        roots = (
            f"the root over the first {_plural(size, 'entry', 'entries')} does not match checkpoint {index + 1} "
            f"(signed root {_short(checkpoint.root_hash)}, recomputed {_short(recomputed)})"
        )
        signed_size = self.checkpoints[-1].tree_size
        if line_count < signed_size:
            raise _Problem(
                "entry_deleted",
                f"{where}: an entry among them was deleted: {roots}, and the file holds {line_count} entries where "
                f"checkpoint {len(self.checkpoints)} signed {signed_size}",
            )
        if line_count > signed_size:
            raise _Problem(
                "entry_inserted",
                f"{where}: an entry was inserted among them: {roots}, and the file holds {line_count} entries where "
                f"checkpoint {len(self.checkpoints)} signed {signed_size}",
            )
        raise _Problem("entry_changed", f"{where}: an entry among them was changed after it was signed: {roots}")

    def _report_uncovered(self, number: int, line: bytes, uncovered: int) -> None:
        try:
            entry: LedgerEntry | None = LedgerEntry.model_validate_json(line)
        except ValidationError:
            entry = None
        if self.checkpoints:
            newest = (
                f"the newest, checkpoint {len(self.checkpoints)}, covers the first "
                f"{self.checkpoints[-1].tree_size} entries"
            )
        else:
            newest = f"{CHECKPOINTS_FILE} is empty"
        raise _Problem(
            "entries_uncovered",
            f"{ENTRIES_FILE} line {number}{_describe(entry)}: not covered by any signed checkpoint ({newest}); "
            f"{_plural(uncovered, 'line was', 'lines were')} appended without a signature, or the checkpoint that "
            "signed them was removed",
        )

    def _check_consistency(self) -> None:
        # Implied by the roots above when they all match; proven anyway, as an auditor holding only two
        # checkpoints would, so the proof code is exercised on every verification.
        for index in range(1, len(self.checkpoints)):
            old, new = self.checkpoints[index - 1], self.checkpoints[index]
            proof = self.tree.consistency_proof(old.tree_size, new.tree_size)
            if not verify_consistency(
                old.tree_size, new.tree_size, bytes.fromhex(old.root_hash), bytes.fromhex(new.root_hash), proof
            ):
                raise _Problem(
                    "checkpoints_inconsistent",
                    f"checkpoint {index + 1} does not extend checkpoint {index}: their consistency proof fails",
                )

    def _check_trusted(self) -> None:
        trusted = self.trusted
        if trusted is None:
            return
        assert self.public_key is not None
        name = self.trusted_name
        if self.run_id is not None and trusted.run_id != self.run_id:  # first: another run's is signed by another key
            raise _Problem(
                "trusted_run_mismatch",
                f"{name} is for run {trusted.run_id!r}, this ledger for run {self.run_id!r}",
            )
        if not trusted.signature_verifies(self.public_key):
            if self.trusted_from == "version head":
                raise _Problem(
                    "trusted_bad_signature",
                    f"{name} does not verify with {PUBLIC_KEY_FILE} (key {_short(self.key_id or '')}): it was altered, "
                    "or the version is of another ledger",
                )
            if trusted.key_id == self.key_id:
                # the same key: the file saved as trusted was altered after `swarm ledger checkpoint` wrote it
                raise _Problem(
                    "trusted_bad_signature",
                    f"the trusted checkpoint names this ledger's key ({_short(trusted.key_id)}) but its signature "
                    "does not verify: the trusted file was altered or damaged since it was saved; save a new one "
                    "with `swarm ledger checkpoint` from a copy you trust",
                )
            raise _Problem(
                "trusted_bad_signature",
                f"the trusted checkpoint (key {_short(trusted.key_id)}) does not verify with {PUBLIC_KEY_FILE} "
                f"(key {_short(self.key_id or '')}): the coordinator's key changed since you saved it",
            )
        size = self.tree.size
        if trusted.tree_size > size:
            raise _Problem(
                "trusted_ahead",
                f"{name} signed {trusted.tree_size} entries and the log now has {size}: history was "
                "truncated",
            )
        proof = self.tree.consistency_proof(trusted.tree_size, size)
        if not verify_consistency(trusted.tree_size, size, bytes.fromhex(trusted.root_hash), self.tree.root(), proof):
            prefix_root = self.tree.root(trusted.tree_size).hex()
            raise _Problem(
                "history_rewritten",
                f"the log does not extend {name}: its first {trusted.tree_size} entries now hash to "
                f"{_short(prefix_root)}, and {name} signed {_short(trusted.root_hash)}: history was "
                "rewritten",
            )


def _as_fingerprint(pinned_key: str | Path) -> str | None:
    """The fingerprint a pin gives as text (64 hex digits, `sha256:` optional), or None if it names a file."""
    text = str(pinned_key).strip().lower().removeprefix("sha256:")
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def _pinned_fingerprint(pinned_key: str | Path | Ed25519PublicKey | None) -> str | None:
    """A pinned key as a fingerprint: a key, a fingerprint or a PEM file."""
    if pinned_key is None:
        return None
    if isinstance(pinned_key, Ed25519PublicKey):
        return key_fingerprint(pinned_key)
    return _as_fingerprint(pinned_key) or key_fingerprint(_load_public_key_file(pinned_key))


def _load_public_key_file(path: str | Path) -> Ed25519PublicKey:
    try:
        pem = Path(path).read_bytes()
    except OSError as error:
        raise LedgerSourceError(f"cannot read the public key {path}: {error.strerror} (--public-key takes a PEM file or "
                                "the key's fingerprint, 64 hex digits as `swarm launch` prints it)") from None
    try:
        return parse_public_key(pem, str(path))
    except ValueError as error:
        raise LedgerSourceError(str(error)) from None


def _parse_head(data: bytes, origin: str) -> SignedCheckpoint:
    try:
        return SignedCheckpoint.model_validate_json(data)
    except ValidationError as error:
        raise LedgerSourceError(f"{origin} is not a signed checkpoint ({_validation_detail(error)}): a version's "
                                "ledger head is the one line the coordinator wrote; fetch the version again") from None


def load_checkpoint(path: str | Path) -> SignedCheckpoint:
    """A signed checkpoint saved by an auditor (`swarm ledger checkpoint SOURCE > saved.json`), or the ledger head of a
    published version (its folder, or its `ledger/head.json`)."""
    path = Path(path)
    if path.is_dir():
        heads = [folder / HEAD_FILE for folder in (path / "ledger", path) if (folder / HEAD_FILE).is_file()]
        copy = path / "ledger" / CHECKPOINTS_FILE
        if not heads and copy.is_file():  # a version published before heads: it carries a copy of the ledger
            try:
                lines, complete = _split_lines(copy.read_bytes())
            except OSError as error:
                raise LedgerSourceError(f"cannot read the trusted checkpoint {copy}: {error.strerror}") from None
            if not complete:
                lines.pop()
            if not lines:
                raise LedgerSourceError(f"{path} was published before any credit was signed ({copy} is empty): "
                                        "there is nothing it could prove")
            return _parse_head(lines[-1], str(copy))
        if not heads and (path / "swarm.json").is_file():
            raise LedgerSourceError(
                f"{path} was published before the ledger signed any credit (it has no ledger/{HEAD_FILE}): it has no "
                "credit to check; pass a later version, or a checkpoint saved by `swarm ledger checkpoint`"
            )
        if not heads:
            raise LedgerSourceError(
                f"{path} is a folder without a version's ledger head (ledger/{HEAD_FILE}): pass a checkpoint saved by "
                "`swarm ledger checkpoint`, or a published version's folder (epoch-NNNNNN/)"
            )
        path = heads[0]
    try:
        text = path.read_bytes()
    except OSError as error:
        raise LedgerSourceError(f"cannot read the trusted checkpoint {path}: {error.strerror}") from None
    try:
        return SignedCheckpoint.model_validate_json(text)
    except ValidationError as error:
        raise LedgerSourceError(
            f"{path} is not a signed checkpoint saved by `swarm ledger checkpoint` ({_validation_detail(error)})"
        ) from None


def load_proof(path: str | Path) -> InclusionProof:
    """An inclusion proof written by `swarm ledger prove`."""
    try:
        text = Path(path).read_bytes()
    except OSError as error:
        raise LedgerSourceError(f"cannot read the proof {path}: {error.strerror}") from None
    try:
        return InclusionProof.model_validate_json(text)
    except ValidationError as error:
        raise LedgerSourceError(
            f"{path} is not an inclusion proof written by `swarm ledger prove` ({_validation_detail(error)})"
        ) from None


def _totals_of_readable_entries(snapshot: _Snapshot) -> LedgerTotals:
    totals = LedgerTotals()
    for line in _split_lines(snapshot.entries)[0]:
        try:
            totals.add(LedgerEntry.model_validate_json(line))
        except ValidationError:
            continue
    return totals


def _verify(
    source: str | Path,
    trusted_checkpoint: SignedCheckpoint | str | Path | None,
    pinned_key: str | Path | Ed25519PublicKey | None,
    count_totals: bool,
) -> tuple[VerifyReport, _Verification, _Snapshot]:
    if trusted_checkpoint is not None and not isinstance(trusted_checkpoint, SignedCheckpoint):
        trusted_checkpoint = load_checkpoint(trusted_checkpoint)
    pinned_id = _pinned_fingerprint(pinned_key)
    snapshot = _read_snapshot(source)
    trusted_from: Literal["given", "version head"] = "given"
    if trusted_checkpoint is None and snapshot.head is not None:
        # a version's ledger folder as a Hub repo holds it: the log as uploaded, and the head the version was
        # published with, which that log must extend
        trusted_checkpoint, trusted_from = _parse_head(snapshot.head, f"{snapshot.source}/{HEAD_FILE}"), "version head"
    verification = _Verification(snapshot, pinned_id, trusted_checkpoint, count_totals, trusted_from)
    try:
        return verification.run(), verification, snapshot
    except _Problem as problem:
        report = VerifyReport(
            ok=False,
            source=snapshot.source,
            problem=str(problem),
            problem_kind=problem.kind,
            run_id=verification.run_id,
            entries=verification.tree.size,
            checkpoints=len(verification.checkpoints),
            key_id=verification.key_id,
        )
        return report, verification, snapshot


def verify_ledger(
    source: str | Path,
    trusted_checkpoint: SignedCheckpoint | str | Path | None = None,
    *,
    pinned_key: str | Path | Ed25519PublicKey | None = None,
) -> VerifyReport:
    """Check a ledger folder (or its http(s) URL) completely; the report names the first problem.

    Checks every line is a canonical `LedgerEntry`, in order and of the checkpoints' run; every checkpoint's
    signature against `public_key.pem` (which must be `pinned_key` if given: a key, its fingerprint or a PEM
    file); that checkpoint sizes never decrease, each root matches the entries it covers and each checkpoint
    extends the previous (consistency proofs); that the newest covers every entry; and, with
    `trusted_checkpoint` (saved earlier by `swarm ledger checkpoint`), that the log extends it.

    Raises `LedgerSourceError` only when the input cannot be read (a missing folder, file or URL).
    """
    return _verify(source, trusted_checkpoint, pinned_key, count_totals=False)[0]


def audit_ledger(
    source: str | Path,
    trusted_checkpoint: SignedCheckpoint | str | Path | None = None,
    *,
    pinned_key: str | Path | Ed25519PublicKey | None = None,
) -> LedgerAudit:
    """`verify_ledger`, plus the totals per volunteer and team (of every readable entry if it fails)."""
    report, verification, snapshot = _verify(source, trusted_checkpoint, pinned_key, count_totals=True)
    totals = verification.totals if report.ok else _totals_of_readable_entries(snapshot)
    return LedgerAudit(report, totals)


def stale_summaries(source: str | Path, totals: LedgerTotals) -> list[str]:
    """The summary files (totals.csv, teams.csv) of a ledger that differ from `totals`, the sums of its verified
    entries: edited, or not yet rewritten after the newest checkpoint. They are derived and not signed, so `verify`
    cannot vouch for them, but a reader of the CSV alone would take edited numbers for verified ones."""
    differing = []
    for name, expected in ((TOTALS_FILE, totals.peers_csv()), (TEAMS_FILE, totals.teams_csv())):
        try:
            actual = _read_from(source, name)
        except LedgerSourceError:
            continue  # not there: nothing to mislead anyone
        if actual.decode("utf-8", errors="replace") != expected:
            differing.append(name)
    return differing


def latest_checkpoint(
    source: str | Path, *, pinned_key: str | Path | Ed25519PublicKey | None = None
) -> SignedCheckpoint:
    """The newest signed checkpoint of a ledger that verifies: what an auditor saves to pass later as trusted."""
    report = verify_ledger(source, pinned_key=pinned_key)
    if not report.ok:
        raise LedgerError(f"the ledger does not verify, so none of its checkpoints is worth saving: {report.problem}")
    if report.latest_checkpoint is None:
        raise LedgerError(f"{source} has no signed checkpoint yet")
    return report.latest_checkpoint


def build_inclusion_proof(
    source: str | Path, leaf_index: int, *, pinned_key: str | Path | Ed25519PublicKey | None = None
) -> InclusionProof:
    """Prove entry `leaf_index` (0-based: line N is N-1) is in the log signed by its newest checkpoint."""
    report, verification, snapshot = _verify(source, None, pinned_key, count_totals=False)
    lines, _ = _split_lines(snapshot.entries)
    if not 0 <= leaf_index < len(lines):
        raise LedgerSourceError(f"there is no entry {leaf_index}: {source} holds entries 0 to {len(lines) - 1}")
    if not report.ok:
        raise LedgerError(f"the ledger does not verify, so no proof from it is worth anything: {report.problem}")
    checkpoint = report.latest_checkpoint
    assert checkpoint is not None  # a ledger with entries verifies only if a checkpoint covers them
    return InclusionProof(
        entry=LedgerEntry.model_validate_json(lines[leaf_index]),
        leaf_index=leaf_index,
        tree_size=checkpoint.tree_size,
        audit_path=[node.hex() for node in verification.tree.inclusion_proof(leaf_index, checkpoint.tree_size)],
        checkpoint=checkpoint,
    )


def verify_inclusion_proof(
    proof: InclusionProof | str | Path,
    source: str | Path | None = None,
    *,
    pinned_key: str | Path | Ed25519PublicKey | None = None,
) -> VerifyReport:
    """Check a proof alone: its checkpoint's signature, and that its entry hashes up to the signed root.

    The key is `pinned_key` when it is a key or a PEM file; otherwise the `public_key.pem` of `source`
    (which must then match a pinned fingerprint, if one is given).
    """
    if not isinstance(proof, InclusionProof):
        proof = load_proof(proof)
    if isinstance(pinned_key, Ed25519PublicKey):
        public_key = pinned_key
    elif pinned_key is not None and _as_fingerprint(pinned_key) is None:
        public_key = _load_public_key_file(pinned_key)
    elif source is not None:
        try:
            public_key = parse_public_key(_read_from(source, PUBLIC_KEY_FILE), f"{source}/{PUBLIC_KEY_FILE}")
        except ValueError as error:
            raise LedgerSourceError(str(error)) from None
        pinned_id = _pinned_fingerprint(pinned_key)
        if pinned_id is not None and key_fingerprint(public_key) != pinned_id:
            return _proof_failure(
                proof,
                "public_key_not_pinned",
                f"{PUBLIC_KEY_FILE} of {source} is not the pinned key {_short(pinned_id)}",
            )
    else:
        raise LedgerSourceError("to check a proof, give the ledger (for its public_key.pem) or --public-key PEM")

    checkpoint = proof.checkpoint
    key_id = key_fingerprint(public_key)
    if not checkpoint.signature_verifies(public_key):
        return _proof_failure(
            proof,
            "proof_bad_signature",
            f"the proof's checkpoint: signature does not verify with the public key (key {_short(key_id)}); it names "
            f"key {_short(checkpoint.key_id)}",
        )
    if checkpoint.key_id != key_id:
        return _proof_failure(
            proof, "proof_bad_signature", "the proof's checkpoint names another key than the one that signed it"
        )
    if proof.tree_size != checkpoint.tree_size:
        return _proof_failure(
            proof,
            "proof_invalid",
            f"the proof is for a tree of {proof.tree_size} entries and its checkpoint signed {checkpoint.tree_size}",
        )
    audit_path = [bytes.fromhex(node) for node in proof.audit_path]
    if not verify_inclusion(
        leaf_hash(proof.entry.canonical_bytes()),
        proof.leaf_index,
        proof.tree_size,
        audit_path,
        bytes.fromhex(checkpoint.root_hash),
    ):
        return _proof_failure(
            proof,
            "proof_invalid",
            f"entry {proof.leaf_index}{_describe(proof.entry)} does not hash up to the root signed by the checkpoint "
            f"of {proof.tree_size} entries: the entry or the audit path was changed",
        )
    return VerifyReport(
        ok=True,
        source=f"proof of entry {proof.leaf_index}{_describe(proof.entry)}",
        subject="proof",
        run_id=checkpoint.run_id,
        entries=1,
        checkpoints=1,
        tree_size=checkpoint.tree_size,
        root_hash=checkpoint.root_hash,
        key_id=key_id,
        latest_checkpoint=checkpoint,
    )


def _proof_failure(proof: InclusionProof, kind: ProblemKind, message: str) -> VerifyReport:
    return VerifyReport(
        ok=False,
        source=f"proof of entry {proof.leaf_index}",
        subject="proof",
        problem=message,
        problem_kind=kind,
        run_id=proof.checkpoint.run_id,
    )
