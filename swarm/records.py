"""What peers and coordinators write into the DHT, and the validators that every node applies to it.

Keys (every key of a run starts with its run id, so runs sharing a DHT never mix):

- `swarm_runs` / subkey `<run_id>/<coordinator peer id>`: each coordinator's `RunAnnouncement` (recipe, data
  identity, how far its ledger goes). Several coordinators may serve one run; `read_announcements` merges them.
- `<run_id>_metrics` / subkey `[owner:<public key>]`: each peer's `PeerMetrics`, signed: only the owner
  of the key can write its subkey (hivemind's `RSASignatureValidator`), and the schema rejects malformed
  values on every node (`SchemaValidator`).
- `<run_id>_contributions` / subkey `[owner:<public key>]`: each peer's `ContributionRecord`: the work it did
  in each closed swarm epoch the ledger has not committed yet (signed and schema-checked the same way). Peers
  keep these on disk and re-publish them until the coordinator's ledger covers them, so a coordinator outage
  delays credit but loses none.
- `<run_id>_progress`: hivemind.Optimizer's own progress records (same signing key).

Every row's `peer_id` must be the libp2p id of the key that owns its subkey (and so signed it): a volunteer's peer id
is derived from the same RSA key (`swarm.identity`), and every node refuses a row that names another peer. Without
that a modified client could file claims under another volunteer's id, and replace or inflate its credit.

Every field has a size bound: an oversized value fails the schema and is rejected by every node. A peer's name
and team follow `LABEL_RULE` (the rule the volunteer's own CLI applies to `--name` and `--team`) and its id is
plain ASCII: they reach the ledger, its CSVs, terminals, /metrics and every version's model card, so a modified
client must not be able to put terminal escapes, formulas or markup there through any honest node.

A node checks every entry of every response to a `dht.get` of a dictionary key, and the same entries come back
read after read until their owners store new ones: with n peers reading n progress records every few seconds,
hivemind's validators spent 0.3-0.36 ms per record (RSA verification 0.16, the pydantic schema 0.09, the rest
stripping and copying): two thirds of a DHT process's time with 16 peers on 2 cores, which starved their
matchmaking.
`CachingSignatureValidator` and `CachingSchemaValidator` remember each exact record's verdict instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from typing import Dict, Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.routing import DHTID
from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from hivemind.dht.validation import DHTRecord
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils import MSGPackSerializer
from pydantic import BaseModel as BaseModelV2
from pydantic.v1 import BaseModel, StrictBool, StrictFloat, confloat, conint, conlist, constr

RUNS_KEY = "swarm_runs"
ANNOUNCEMENT_TTL_S = 60.0  # re-published every 20 s by the coordinator
METRICS_TTL_S = 120.0
CONTRIBUTIONS_TTL_S = 600.0
MAX_EPOCHS_PER_RECORD = 128  # ~10 KB per record; older unpublished epochs follow once the ledger catches up

# A volunteer's display name or team: letters and digits of any script, spaces and . @ + - _, at most 40. So no
# control character (terminal escapes), no markup (< [ | `) and no leading = (a spreadsheet formula). An empty team
# is no team.
LABEL_RULE = r"[\w .@+-]{1,40}"
_LABEL_PATTERN = re.compile(LABEL_RULE)


def is_valid_name(value: object) -> bool:
    return isinstance(value, str) and _LABEL_PATTERN.fullmatch(value) is not None


def is_valid_team(value: object) -> bool:
    return value == "" or is_valid_name(value)


# pydantic v1 matches a `regex` at the start only (re.match): hence ^...\Z ($ would let a final newline through)
_Name = constr(regex=rf"^{LABEL_RULE}\Z", strict=True)
_Team = constr(regex=rf"^(?:{LABEL_RULE})?\Z", strict=True)
# a base58 libp2p peer id from honest peers; tests and tools use short ASCII ids
_PeerId = constr(regex=r"^[A-Za-z0-9_.+-]{1,128}\Z", strict=True)
# free text a peer describes itself with (device, version, addresses): printable, no C0/C1 controls or bidi overrides
_PLAIN_TEXT = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*\Z"


class RunAnnouncement(BaseModelV2):
    """Published by the coordinator: everything a joining peer needs besides the network address."""

    run_id: str
    recipe_json: str
    recipe_fingerprint: str
    data_digest: str
    data_description: str
    swarm_version: str
    coordinator_peer_id: str
    started_at: float
    # "running", then "finished" once the coordinator saved the final checkpoint: peers that stopped at the
    # run's limits keep serving their state until then, so the final version can be fetched from them.
    # "stopped": the coordinator was stopped before the run's end (it can be launched again)
    status: str = "running"
    final_epoch: int | None = None
    # set when the organiser ends the run before its limits: peers stop once this epoch is reached, as at a limit
    end_epoch: int | None = None
    # the last epoch the coordinator's ledger has committed; peers re-publish their work for later epochs
    ledger_epoch: int = -1
    # the newest published version: a local folder or "<hub repo>@<revision>"; a volunteer who finds nobody
    # training starts from it instead of from random weights
    latest_version: str | None = None
    latest_version_epoch: int | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "RunAnnouncement":
        return cls.model_validate_json(data)


def announcement_subkey(run_id: str, coordinator_peer_id: str) -> str:
    return f"{run_id}/{coordinator_peer_id}"


def read_announcements(found) -> dict[str, "RunAnnouncement"]:
    """{run_id: announcement} from a `dht.get(RUNS_KEY, latest=True)` value, merging a run's coordinators.

    The merged view keeps the earliest start (the run's wall-time limit counts from it), the lowest ledger
    epoch (peers re-publish their work until every coordinator's ledger has it), the earliest end an organiser set,
    and a status: "finished" once any coordinator has saved the final version, "stopped" when every coordinator was
    stopped, else "running".
    Unreadable rows are skipped.
    """
    by_run: dict[str, list[RunAnnouncement]] = {}
    if found is None or not isinstance(getattr(found, "value", None), dict):
        return {}
    for item in found.value.values():
        try:
            announcement = RunAnnouncement.from_bytes(item.value)
        except Exception:
            continue
        by_run.setdefault(announcement.run_id, []).append(announcement)
    merged = {}
    for run_id, announcements in by_run.items():
        newest = max(announcements, key=lambda a: (a.latest_version_epoch or -1, a.started_at))
        merged[run_id] = newest.model_copy(update=dict(
            started_at=min(a.started_at for a in announcements),
            ledger_epoch=min(a.ledger_epoch for a in announcements),
            status=_merged_status([a.status for a in announcements]),
            final_epoch=max((a.final_epoch for a in announcements if a.final_epoch is not None), default=None),
            end_epoch=min((a.end_epoch for a in announcements if a.end_epoch is not None), default=None)))
    return merged


def _merged_status(statuses: list[str]) -> str:
    if "finished" in statuses:
        return "finished"
    return "stopped" if statuses and all(status == "stopped" for status in statuses) else "running"


class PeerMetrics(BaseModel):
    """A peer's live status, re-published every few seconds.

    Strict types: hivemind's schema validator is pydantic v1.
    """

    peer_id: _PeerId
    name: _Name
    team: _Team
    epoch: conint(ge=0, strict=True)
    samples_total: conint(ge=0, strict=True)
    samples_per_second: confloat(ge=0.0, strict=True)
    loss: Optional[StrictFloat]
    averaged_rounds: conint(ge=0, strict=True)
    solo_rounds: conint(ge=0, strict=True)
    last_group_size: conint(ge=0, strict=True)
    device: constr(max_length=64, strict=True, regex=_PLAIN_TEXT)
    version: constr(max_length=32, strict=True, regex=_PLAIN_TEXT)
    time: StrictFloat
    client_mode: StrictBool
    # where other nodes can reach this peer: a restarted coordinator re-joins the swarm through these
    addresses: conlist(constr(max_length=256, strict=True, regex=_PLAIN_TEXT), max_items=8)


class LeavingRecord(BaseModel):
    """Published by the last peer training as it leaves: it serves its state (of `epoch`) until the coordinator has
    saved it as a version, since it holds the swarm's progress since the newest one.

    A record of its own rather than a field of PeerMetrics: hivemind's schema check compares a row with its parsed
    form, so a new field, even with a default, would make every node refuse the rows of older peers.
    """

    peer_id: _PeerId
    epoch: conint(ge=0, strict=True)
    time: StrictFloat


class EpochWork(BaseModel):
    """What one peer did in one swarm epoch (its claim; the coordinator decides what is granted)."""

    epoch: conint(ge=0, strict=True)
    samples: conint(ge=0, le=10**9, strict=True)
    micro_steps: conint(ge=0, le=10**8, strict=True)
    compute_s: confloat(ge=0.0, le=10**7, strict=True)


class ContributionRecord(BaseModel):
    peer_id: _PeerId
    name: _Name
    team: _Team
    version: constr(max_length=32, strict=True, regex=_PLAIN_TEXT)
    epochs: conlist(EpochWork, max_items=MAX_EPOCHS_PER_RECORD)
    time: StrictFloat


class _RunSchema(BaseModel):
    metrics: Dict[BytesWithPublicKey, Optional[PeerMetrics]]
    contributions: Dict[BytesWithPublicKey, Optional[ContributionRecord]]
    leaving: Dict[BytesWithPublicKey, Optional[LeavingRecord]]


def metrics_key(run_id: str) -> str:
    return f"{run_id}_metrics"


def contributions_key(run_id: str) -> str:
    return f"{run_id}_contributions"


def leaving_key(run_id: str) -> str:
    return f"{run_id}_leaving"


def parse_leaving(entries, now: float, max_age_s: float = 30.0) -> dict[str, LeavingRecord]:
    """{peer_id: record} of the peers that said they are leaving within `max_age_s`; bad rows are skipped."""
    result = {}
    if entries is None or not isinstance(getattr(entries, "value", None), dict):
        return result
    for item in entries.value.values():
        try:
            record = LeavingRecord.parse_obj(item.value)
        except Exception:
            continue
        if now - record.time < max_age_s:
            result[record.peer_id] = record
    return result


def peer_id_of(public_key: rsa.RSAPublicKey) -> str:
    """The base58 libp2p peer id of an RSA public key (libp2p's peer-id spec: the SHA-256 multihash of the key's
    protobuf encoding), as hivemind's p2p daemon derives it from a node's `p2p.key`."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    return PeerID(b"\x12\x20" + hashlib.sha256(encoded).digest()).to_base58()  # multihash 0x12: sha2-256, 32 bytes


_OWNER = re.compile(RSASignatureValidator.PUBLIC_KEY_REGEX)


def owner_peer_id(subkey: bytes) -> str | None:
    """The peer id of the key named in a protected subkey (`[owner:ssh-rsa ...]`), or None if it names none."""
    found = _OWNER.search(subkey)
    if found is None:
        return None
    try:
        public_key = serialization.load_ssh_public_key(found.group(1))
    except (ValueError, TypeError):
        return None
    return peer_id_of(public_key) if isinstance(public_key, rsa.RSAPublicKey) else None


class _VerdictCache:
    """Remembers a validator's verdict per exact record (key, subkey, value, expiration), most recent first.

    A verdict of these validators depends on nothing but the record's bytes, so it is looked up by a 128-bit
    BLAKE2 digest of them (a forged record differs in its bytes, so it never hits a genuine one's verdict).
    Rejections are remembered too: a flood of one bad record costs one check. The cache holds `cache_size` records
    and is not pickled: the validator reaches hivemind's DHT process with an empty one.
    """

    def _init_cache(self, cache_size: int) -> None:
        self.cache_size = cache_size
        self._verdicts: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()  # the DHT process validates from its event loop and its RPC handlers
        self.checks = 0  # records actually checked (not answered from the cache)

    def _cached_verdict(self, record: DHTRecord, check) -> bool:
        fields = [record.key, record.subkey, record.value, record.expiration_time]  # msgpack: unambiguous bytes
        digest = hashlib.blake2b(MSGPackSerializer.dumps(fields), digest_size=16).digest()
        with self._lock:
            verdict = self._verdicts.get(digest)
            if verdict is not None:
                self._verdicts.move_to_end(digest)
                return verdict
        verdict = bool(check(record))
        with self._lock:
            self.checks += 1
            self._verdicts[digest] = verdict
            while len(self._verdicts) > self.cache_size:
                self._verdicts.popitem(last=False)
        return verdict

    def _forget_verdicts(self) -> None:
        with self._lock:
            self._verdicts.clear()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_verdicts"] = OrderedDict()
        return state

    def __setstate__(self, state):
        super_setstate = getattr(super(), "__setstate__", None)
        if super_setstate is not None:  # SchemaValidator re-registers its pydantic models in the new process
            super_setstate(state)
        else:
            self.__dict__.update(state)
        self._lock = threading.Lock()


class CachingSignatureValidator(_VerdictCache, RSASignatureValidator):
    """hivemind's `RSASignatureValidator` (only a key's owner may write its subkeys), each record verified once."""

    def __init__(self, private_key=None, cache_size: int = 16384):
        super().__init__(private_key)
        self._init_cache(cache_size)

    def validate(self, record: DHTRecord) -> bool:
        return self._cached_verdict(record, super().validate)


class CachingSchemaValidator(_VerdictCache, SchemaValidator):
    """hivemind's `SchemaValidator`, each record checked once; rows under `bound_keys` must also name as their
    `peer_id` the peer whose key owns their subkey (`owner_peer_id`).

    A verdict also depends on the schemas: merging another schema validator in (hivemind's progress tracker adds
    its own) clears the cache.
    """

    def __init__(self, schema, allow_extra_keys: bool = True, prefix: str | None = None, cache_size: int = 16384,
                 bound_keys: tuple[str, ...] = ()):
        super().__init__(schema, allow_extra_keys=allow_extra_keys, prefix=prefix)
        self._bound_key_ids = {DHTID.generate(source=key).to_bytes() for key in bound_keys}
        self._init_cache(cache_size)

    def validate(self, record: DHTRecord) -> bool:
        return self._cached_verdict(record, self._check)

    def _check(self, record: DHTRecord) -> bool:
        return super().validate(record) and self._names_its_owner(record)

    def _names_its_owner(self, record: DHTRecord) -> bool:
        if record.key not in self._bound_key_ids or record.subkey in DHTProtocol.RESERVED_SUBKEYS:
            return True
        value = DHTProtocol.serializer.loads(record.value)  # the schema check above has decoded it once already
        if value is None:  # a withdrawn row
            return True
        subkey = DHTProtocol.serializer.loads(record.subkey)
        owner = owner_peer_id(subkey) if isinstance(subkey, bytes) else None
        return owner is not None and isinstance(value, dict) and value.get("peer_id") == owner

    def merge_with(self, other) -> bool:
        merged = super().merge_with(other)
        if merged:
            self._bound_key_ids |= getattr(other, "_bound_key_ids", set())
            self._forget_verdicts()
        return merged


def schema_validators(run_id: str) -> list:
    """Validators for a run's records; pass them to the DHT together with the identity's signature validator.

    Add them before hivemind's optimiser adds its own schema (as the volunteer and coordinator do): the first
    schema validator absorbs later ones, and only this one caches its verdicts.
    """
    return [CachingSchemaValidator(_RunSchema, prefix=run_id,
                                   bound_keys=(metrics_key(run_id), contributions_key(run_id), leaving_key(run_id)))]


def parse_contributions(entries) -> list[ContributionRecord]:
    """Decode a `dht.get(contributions_key(...), latest=True)` value, skipping rows that do not parse."""
    result = []
    if entries is None or not isinstance(getattr(entries, "value", None), dict):
        return result
    for item in entries.value.values():
        try:
            result.append(ContributionRecord.parse_obj(item.value))
        except Exception:
            continue
    return result


def parse_metrics(entries, skip_subkeys: frozenset | set = frozenset()) -> dict[str, PeerMetrics]:
    """Decode a `dht.get(metrics_key(...), latest=True)` value into {peer_id: metrics}, skipping bad rows and the
    rows stored under `skip_subkeys` (owner public keys)."""
    result = {}
    if entries is None or not isinstance(getattr(entries, "value", None), dict):
        return result
    for subkey, item in entries.value.items():
        if subkey in skip_subkeys:
            continue
        value = getattr(item, "value", item)
        try:
            metrics = PeerMetrics.parse_obj(value)
        except Exception:  # a node's schema validator already rejects bad records; be defensive on read
            continue
        result[metrics.peer_id] = metrics
    return result


def live_peers(metrics_entries, progress_entries, now: float, max_age_s: float) -> dict[str, PeerMetrics]:
    """Peers whose metrics are fresher than `max_age_s`, less those that left cleanly: {peer_id: metrics}.

    Both arguments are `dht.get(..., latest=True)` results of the metrics key and of hivemind's progress key, whose
    rows share a subkey per peer (its owner public key). hivemind withdraws a peer's progress row (stores None) when
    the peer shuts down cleanly, while its last metrics row stays fresh for a while: without this, the others
    counted a peer that had just left as alive for 15 s.
    """
    withdrawn = set()
    if progress_entries is not None and isinstance(getattr(progress_entries, "value", None), dict):
        withdrawn = {subkey for subkey, item in progress_entries.value.items() if getattr(item, "value", 0) is None}
    return {peer: metrics for peer, metrics in parse_metrics(metrics_entries, skip_subkeys=withdrawn).items()
            if now - metrics.time < max_age_s}


def metrics_to_json(metrics: dict[str, PeerMetrics]) -> str:
    return json.dumps({peer: row.dict() for peer, row in metrics.items()}, sort_keys=True)
