"""What peers and coordinators write into the DHT, and the validators that every node applies to it.

Keys (every key of a run starts with its run id, so runs sharing a DHT never mix):

- `swarm_runs` / subkey `<run_id>`: the coordinator's `RunAnnouncement` (recipe, data identity).
- `<run_id>_metrics` / subkey `[owner:<public key>]`: each peer's `PeerMetrics`, signed: only the owner
  of the key can write its subkey (hivemind's `RSASignatureValidator`), and the schema rejects malformed
  values on every node (`SchemaValidator`).
- `<run_id>_progress`: hivemind.Optimizer's own progress records (same signing key).
"""

from __future__ import annotations

import json
from typing import Dict, Optional

from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from pydantic import BaseModel as BaseModelV2
from pydantic.v1 import BaseModel, StrictBool, StrictFloat, StrictInt, StrictStr, confloat, conint, constr

RUNS_KEY = "swarm_runs"
ANNOUNCEMENT_TTL_S = 60.0  # re-published every 20 s by the coordinator
METRICS_TTL_S = 120.0


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
    # run's limits keep serving their state until then, so the final version can be fetched from them
    status: str = "running"
    final_epoch: int | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "RunAnnouncement":
        return cls.model_validate_json(data)


class PeerMetrics(BaseModel):
    """A peer's live status, re-published every few seconds (strict types: hivemind's schema validator is pydantic v1)."""

    peer_id: constr(max_length=128, strict=True)
    name: constr(max_length=64, strict=True)
    team: constr(max_length=64, strict=True)
    epoch: conint(ge=0, strict=True)
    samples_total: conint(ge=0, strict=True)
    samples_per_second: confloat(ge=0.0, strict=True)
    loss: Optional[StrictFloat]
    averaged_rounds: conint(ge=0, strict=True)
    solo_rounds: conint(ge=0, strict=True)
    last_group_size: conint(ge=0, strict=True)
    device: constr(max_length=64, strict=True)
    version: constr(max_length=32, strict=True)
    time: StrictFloat
    client_mode: StrictBool


class _MetricsSchema(BaseModel):
    metrics: Dict[BytesWithPublicKey, Optional[PeerMetrics]]


def metrics_key(run_id: str) -> str:
    return f"{run_id}_metrics"


def schema_validators(run_id: str) -> list:
    """Validators for a run's records; pass them to the DHT together with the identity's signature validator."""
    return [SchemaValidator(_MetricsSchema, prefix=run_id)]


def parse_metrics(entries) -> dict[str, PeerMetrics]:
    """Decode a `dht.get(metrics_key(...), latest=True)` value into {peer_id: metrics}, skipping bad rows."""
    result = {}
    if entries is None:
        return result
    for _subkey, item in getattr(entries, "value", entries).items():
        value = getattr(item, "value", item)
        try:
            metrics = PeerMetrics.parse_obj(value)
        except Exception:  # a node's schema validator already rejects bad records; be defensive on read
            continue
        result[metrics.peer_id] = metrics
    return result


def metrics_to_json(metrics: dict[str, PeerMetrics]) -> str:
    return json.dumps({peer: row.dict() for peer, row in metrics.items()}, sort_keys=True)
