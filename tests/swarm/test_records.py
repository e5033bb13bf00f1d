"""Run records in the DHT: signed per-peer metrics that only their owner can write, schema checks on every node.

Real hivemind nodes on loopback: two honest peers with their own identities and the run's validators and, for the
last tests, a rogue node that applies no validators at all (so whatever it stores must be refused by the honest
ones). `store` reports success if any replica took the value, so with a rogue present only reads can tell.
"""

from __future__ import annotations

import dataclasses
import json
import time

import msgpack
import hivemind
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer, ValueWithExpiration, get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from swarm import records
from swarm.identity import Identity
from swarm.network import create_dht, join_addresses

RUN_ID = "records-test"


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """(alice, bob) DHT nodes and their owner subkeys."""
    identities = [Identity.load_or_create(tmp_path_factory.mktemp(name) / "id", name=name) for name in ("alice", "bob")]
    nodes = []
    try:
        alice = create_dht([], host="127.0.0.1", identity=identities[0],
                           record_validators=records.schema_validators(RUN_ID))
        nodes.append(alice)
        bob = create_dht(join_addresses(alice), host="127.0.0.1", identity=identities[1],
                         record_validators=records.schema_validators(RUN_ID))
        nodes.append(bob)
        subkeys = [RSASignatureValidator(identity.signing_key).local_public_key for identity in identities]
        yield alice, bob, subkeys
    finally:
        for node in nodes:
            node.shutdown()


def metrics_row(peer_id: str, **changes) -> dict:
    row = dict(
        peer_id=peer_id, name="alice", team="lovelace", epoch=3, samples_total=1200, samples_per_second=41.5,
        loss=2.25, averaged_rounds=2, solo_rounds=1, last_group_size=2, device="cpu (2 threads)", version="0.1.0",
        time=float(get_dht_time()), client_mode=False, addresses=["/ip4/127.0.0.1/tcp/31337/p2p/" + peer_id],
    )
    row.update(changes)
    return row


def contribution_row(peer_id: str, **changes) -> dict:
    row = dict(
        peer_id=peer_id, name="alice", team="lovelace", version="0.1.0", time=float(get_dht_time()),
        epochs=[dict(epoch=4, samples=64, micro_steps=4, compute_s=1.5), dict(epoch=5, samples=32, micro_steps=2,
                                                                              compute_s=0.75)],
    )
    row.update(changes)
    return row


def read_metrics(node) -> dict[str, records.PeerMetrics]:
    return records.parse_metrics(node.get(records.metrics_key(RUN_ID), latest=True))


def store(node, subkey, value, key: str | None = None) -> bool:
    return node.store(key or records.metrics_key(RUN_ID), subkey=subkey, value=value,
                      expiration_time=get_dht_time() + records.METRICS_TTL_S)


def read_contributions(node) -> list[records.ContributionRecord]:
    return records.parse_contributions(node.get(records.contributions_key(RUN_ID), latest=True))


def test_metrics_key_is_scoped_by_run():
    assert records.metrics_key("run-a") != records.metrics_key("run-b")
    assert records.metrics_key("run-a").startswith("run-a")


def test_a_peers_signed_metrics_are_readable_by_another_peer(swarm):
    alice, bob, (alice_key, _) = swarm
    row = metrics_row(alice.peer_id.to_base58(), epoch=5)
    assert store(alice, alice_key, row)
    seen = read_metrics(bob)
    assert seen[alice.peer_id.to_base58()] == records.PeerMetrics(**row)


def test_a_peer_cannot_overwrite_another_peers_metrics(swarm):
    alice, bob, (alice_key, _) = swarm
    honest = metrics_row(alice.peer_id.to_base58(), epoch=6, samples_total=10)
    assert store(alice, alice_key, honest)
    forged = metrics_row(alice.peer_id.to_base58(), epoch=6, samples_total=10**9, time=honest["time"] + 1)
    assert not store(bob, alice_key, forged), "bob cannot sign for alice's key, and unsigned values are refused"
    for reader in (alice, bob):
        assert read_metrics(reader)[alice.peer_id.to_base58()].samples_total == 10


def test_metrics_under_a_subkey_that_is_not_a_public_key_are_refused(swarm):
    alice, bob, _ = swarm
    assert not store(bob, b"just-a-name", metrics_row("QmNameOnly"))
    assert "QmNameOnly" not in read_metrics(alice)


def _without(field: str) -> dict:
    row = metrics_row("QmBob")
    del row[field]
    return row


@pytest.mark.parametrize(
    "bad_row",
    [
        metrics_row("QmBob", samples_total=-1),
        metrics_row("QmBob", samples_per_second=-3.0),
        metrics_row("QmBob", epoch="3"),
        metrics_row("QmBob", epoch=3.0),
        metrics_row("QmBob", samples_per_second=40),  # strict float: an int would be converted
        metrics_row("QmBob", client_mode=1),
        metrics_row("QmBob", name="x" * 65),
        metrics_row("QmBob", extra_field=1),
        metrics_row("QmBob", addresses=["/ip4/127.0.0.1/tcp/1"] * 9),
        metrics_row("QmBob", addresses="/ip4/127.0.0.1/tcp/1"),
        _without("epoch"),
        _without("peer_id"),
        "not a mapping",
    ],
    ids=["negative-samples", "negative-speed", "string-epoch", "float-epoch", "int-speed", "int-bool", "long-name",
         "unknown-field", "nine-addresses", "address-not-a-list", "missing-epoch", "missing-peer-id", "not-a-mapping"],
)
def test_metrics_that_do_not_match_the_schema_are_refused(swarm, bad_row):
    alice, bob, (_, bob_key) = swarm
    assert not store(bob, bob_key, bad_row)
    assert "QmBob" not in read_metrics(alice)


def test_metrics_of_both_peers_are_listed_side_by_side(swarm):
    alice, bob, (alice_key, bob_key) = swarm
    assert store(alice, alice_key, metrics_row(alice.peer_id.to_base58(), name="alice"))
    assert store(bob, bob_key, metrics_row(bob.peer_id.to_base58(), name="bob", loss=None))
    for reader in (alice, bob):
        seen = read_metrics(reader)
        assert {seen[alice.peer_id.to_base58()].name, seen[bob.peer_id.to_base58()].name} == {"alice", "bob"}
        assert seen[bob.peer_id.to_base58()].loss is None


def test_metrics_of_another_run_are_not_mixed_in(swarm):
    alice, bob, (alice_key, _) = swarm
    assert store(alice, alice_key, metrics_row(alice.peer_id.to_base58()))
    assert records.parse_metrics(bob.get(records.metrics_key("some-other-run"), latest=True)) == {}


def test_parse_metrics_skips_malformed_rows_and_accepts_none():
    good = metrics_row("QmGood")
    expiration = get_dht_time() + 60
    entries = ValueWithExpiration(
        {b"a": ValueWithExpiration(good, expiration), b"b": ValueWithExpiration({"peer_id": "QmBad"}, expiration),
         b"c": ValueWithExpiration("junk", expiration)},
        expiration,
    )
    parsed = records.parse_metrics(entries)
    assert list(parsed) == ["QmGood"] and parsed["QmGood"].samples_total == 1200
    assert records.parse_metrics(None) == {}
    assert records.parse_metrics(ValueWithExpiration(b"not a dictionary", expiration)) == {}


def test_metrics_to_json_is_sorted_and_complete():
    row = records.PeerMetrics(**metrics_row("QmGood"))
    text = records.metrics_to_json({"QmGood": row})
    assert text.startswith('{"QmGood": {')
    assert '"samples_total": 1200' in text


def test_a_peers_signed_contributions_are_readable_by_another_peer(swarm):
    alice, bob, (alice_key, _) = swarm
    row = contribution_row(alice.peer_id.to_base58())
    assert store(alice, alice_key, row, key=records.contributions_key(RUN_ID))
    seen = [record for record in read_contributions(bob) if record.peer_id == alice.peer_id.to_base58()]
    assert [[work.epoch for work in record.epochs] for record in seen] == [[4, 5]]
    assert seen[0].epochs[1] == records.EpochWork(epoch=5, samples=32, micro_steps=2, compute_s=0.75)


def test_a_peer_cannot_claim_work_under_another_peers_key(swarm):
    alice, bob, (alice_key, _) = swarm
    assert store(alice, alice_key, contribution_row(alice.peer_id.to_base58()), key=records.contributions_key(RUN_ID))
    inflated = contribution_row(alice.peer_id.to_base58(), epochs=[dict(epoch=4, samples=10**9, micro_steps=1,
                                                                        compute_s=1.0)])
    assert not store(bob, alice_key, inflated, key=records.contributions_key(RUN_ID))
    claimed = {work.samples for record in read_contributions(alice) for work in record.epochs}
    assert 10**9 not in claimed


@pytest.mark.parametrize("kind", ["metrics", "contributions", "leaving"])
def test_a_peer_cannot_file_rows_under_another_peers_id_even_under_its_own_key(swarm, kind):
    """A modified client signed its own rows but named another volunteer in them: the coordinator credited by the
    named id, so it could replace that volunteer's claims (or inflate them) and pass as it in the leaderboard."""
    alice, bob, (alice_key, bob_key) = swarm
    victim = alice.peer_id.to_base58()
    key = {"metrics": records.metrics_key, "contributions": records.contributions_key,
           "leaving": records.leaving_key}[kind](RUN_ID)
    row = {"metrics": lambda peer: metrics_row(peer, samples_total=31),
           "contributions": lambda peer: contribution_row(peer, epochs=[dict(epoch=9, samples=31, micro_steps=1,
                                                                            compute_s=1.0)]),
           "leaving": lambda peer: dict(peer_id=peer, epoch=31, time=float(get_dht_time()))}[kind]
    assert not store(bob, bob_key, row(victim), key=key)
    assert store(bob, bob_key, row(bob.peer_id.to_base58()), key=key), "its own id, under its own key, is fine"
    assert alice.get(key, latest=True).value[bob_key].value["peer_id"] == bob.peer_id.to_base58()
    assert store(bob, bob_key, None, key=key), "and withdrawing its row names no one"


def test_only_a_key_names_its_owner():
    signer = RSASignatureValidator(RSAPrivateKey())
    owner = records.owner_peer_id(signer.local_public_key)
    assert owner.startswith("Qm") and owner == records.owner_peer_id(b"[prefix]" + signer.local_public_key)
    assert records.owner_peer_id(b"[owner:ssh-rsa AAAAgarbage]") is None
    ed25519 = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    assert records.owner_peer_id(b"[owner:" + ed25519 + b"]") is None


@pytest.mark.parametrize(
    "bad_epochs",
    [
        [dict(epoch=4, samples=10**9 + 1, micro_steps=1, compute_s=1.0)],
        [dict(epoch=-1, samples=1, micro_steps=1, compute_s=1.0)],
        [dict(epoch=4, samples=1, micro_steps=1, compute_s=1)],
        [dict(epoch=4, samples=1, micro_steps=1)],
        [dict(epoch=epoch, samples=1, micro_steps=1, compute_s=0.1)
         for epoch in range(records.MAX_EPOCHS_PER_RECORD + 1)],
    ],
    ids=["too-many-samples", "negative-epoch", "int-compute", "missing-compute", "too-many-epochs"],
)
def test_contributions_that_do_not_match_the_schema_are_refused(swarm, bad_epochs):
    _, bob, (_, bob_key) = swarm
    row = contribution_row(bob.peer_id.to_base58(), epochs=bad_epochs)
    assert not store(bob, bob_key, row, key=records.contributions_key(RUN_ID))


# A modified client skips the CLI's --name/--team check; before the schema applied the same rule these reached signed
# ledger entries, totals.csv (a formula), the terminal of `swarm ledger show`, /metrics and every model card.
HOSTILE_LABELS = {
    "escape": "ada\x1b[31mRED\x1b[0m",
    "carriage-return": "ada\rbob",
    "formula": '=HYPERLINK("http://evil.example","x")',
    "markdown-link": "[Claim your prize](https://evil.example)",
    "markdown-image": "![](https://tracker.example/p.gif)",
    "pipe": "a | b",
    "html": "<script>alert(1)</script>",
    "bidi-override": "\u202eevil",
    "final-newline": "ada\n",
    "too-long": "x" * 41,
}


@pytest.mark.parametrize("field", ["name", "team"])
@pytest.mark.parametrize("label", HOSTILE_LABELS.values(), ids=HOSTILE_LABELS)
def test_names_and_teams_outside_the_clis_rule_are_refused_by_every_node(swarm, field, label):
    alice, bob, (_, bob_key) = swarm
    peer = bob.peer_id.to_base58()
    assert not store(bob, bob_key, metrics_row(peer, **{field: label}))
    assert not store(bob, bob_key, contribution_row(peer, **{field: label}), key=records.contributions_key(RUN_ID))
    assert all(getattr(row, field) != label for row in read_metrics(alice).values())
    assert all(getattr(record, field) != label for record in read_contributions(alice))


def test_names_of_any_script_default_names_and_no_team_are_accepted():
    accepted = (("José 深度", "lovelace"), ("volunteer-3f9a2c", ""), ("a.l@x+1_y-z", "uni lab"), ("x" * 40, ""))
    for name, team in accepted:
        assert records.PeerMetrics.parse_obj(metrics_row("QmGood", name=name, team=team)).name == name
        assert records.ContributionRecord.parse_obj(contribution_row("QmGood", name=name, team=team)).team == team
    with pytest.raises(ValueError):
        records.PeerMetrics.parse_obj(metrics_row("QmGood", name=""))  # a name is never empty


@pytest.mark.parametrize(
    "changes",
    [dict(peer_id="Qm\x1b[2J"), dict(peer_id="Qm|x"), dict(peer_id=""), dict(device="cpu\x1b]0;pwned\x07"),
     dict(version="0.1.0\n"), dict(addresses=["/ip4/127.0.0.1/tcp/1\r"])],
    ids=["escape-in-peer-id", "pipe-in-peer-id", "empty-peer-id", "escape-in-device", "newline-in-version",
         "return-in-address"],
)
def test_peer_ids_and_self_descriptions_with_control_characters_are_refused(changes):
    with pytest.raises(ValueError):
        records.PeerMetrics.parse_obj(dict(metrics_row("QmGood"), **changes))
    contribution_changes = {key: value for key, value in changes.items() if key in ("peer_id", "version")}
    if contribution_changes:
        with pytest.raises(ValueError):
            records.ContributionRecord.parse_obj(dict(contribution_row("QmGood"), **contribution_changes))


def test_a_rogue_nodes_rows_with_hostile_names_are_skipped_when_read():
    expiration = get_dht_time() + 60
    rows = {b"good": metrics_row("QmGood"), b"evil": metrics_row("QmEvil", team=HOSTILE_LABELS["formula"])}
    entries = ValueWithExpiration({key: ValueWithExpiration(row, expiration) for key, row in rows.items()}, expiration)
    assert list(records.parse_metrics(entries)) == ["QmGood"]
    claims = {b"good": contribution_row("QmGood"), b"evil": contribution_row("QmEvil", name=HOSTILE_LABELS["escape"])}
    entries = ValueWithExpiration({key: ValueWithExpiration(row, expiration) for key, row in claims.items()},
                                  expiration)
    assert [record.peer_id for record in records.parse_contributions(entries)] == ["QmGood"]


def test_run_announcement_round_trips_through_bytes():
    announcement = records.RunAnnouncement(
        run_id="tiny", recipe_json='{"run": {"id": "tiny"}}', recipe_fingerprint="0123456789abcdef",
        data_digest="sha256:ab", data_description="stdlib, 3 files", swarm_version="0.1.0",
        coordinator_peer_id="QmCoordinator", started_at=1700000000.5, status="finished", final_epoch=12,
        ledger_epoch=11,
    )
    data = announcement.to_bytes()
    assert isinstance(data, bytes)
    assert records.RunAnnouncement.from_bytes(data) == announcement
    minimal = {key: value for key, value in announcement.model_dump().items()
               if key not in ("status", "final_epoch", "ledger_epoch", "end_epoch")}
    defaults = records.RunAnnouncement.from_bytes(json.dumps(minimal).encode())  # as older coordinators publish
    assert (defaults.status, defaults.final_epoch, defaults.ledger_epoch, defaults.end_epoch) == (
        "running", None, -1, None)


def test_a_runs_coordinators_merge_into_one_announcement_with_the_earliest_start_and_lowest_ledger_epoch():
    from types import SimpleNamespace

    def coordinator(peer_id: str, started_at: float, status: str, ledger_epoch: int, version: int | None):
        return records.RunAnnouncement(
            run_id="tiny", recipe_json="{}", recipe_fingerprint="f", data_digest="d", data_description="",
            swarm_version="0.1.0", coordinator_peer_id=peer_id, started_at=started_at, status=status,
            ledger_epoch=ledger_epoch, latest_version_epoch=version)

    def merged(*announcements):
        found = SimpleNamespace(value={f"tiny/{a.coordinator_peer_id}": SimpleNamespace(value=a.to_bytes())
                                       for a in announcements} | {"junk": SimpleNamespace(value=b"{")})
        return records.read_announcements(found)["tiny"]

    one = merged(coordinator("QmA", 10.0, "running", 7, 5), coordinator("QmB", 5.0, "stopped", 3, 9))
    assert (one.started_at, one.ledger_epoch, one.latest_version_epoch, one.status) == (5.0, 3, 9, "running")
    stopped, finished = coordinator("QmA", 1.0, "stopped", 1, 2), coordinator("QmB", 1.0, "finished", 1, 2)
    assert merged(stopped, coordinator("QmB", 1.0, "stopped", 1, 2)).status == "stopped"
    assert merged(stopped, finished).status == "finished"
    assert merged(stopped, finished).end_epoch is None
    # an organiser ended the run through one coordinator: the peers stop at the earliest end any coordinator set
    ending = [coordinator(name, 1.0, "running", 1, 2).model_copy(update={"end_epoch": end})
              for name, end in (("QmA", 9), ("QmB", None), ("QmC", 7))]
    assert merged(*ending).end_epoch == 7
    assert records.read_announcements(None) == {}


def test_run_announcement_from_bytes_rejects_a_truncated_record():
    data = records.RunAnnouncement(
        run_id="tiny", recipe_json="{}", recipe_fingerprint="f", data_digest="d", data_description="",
        swarm_version="0.1.0", coordinator_peer_id="Qm", started_at=1.0,
    ).to_bytes()
    with pytest.raises(ValueError):
        records.RunAnnouncement.from_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------------------------
# a node that validates nothing: the honest nodes must still refuse what it stores and what it serves


@pytest.fixture
def rogue(swarm):
    # a bare hivemind node, as a cheater would run it: swarm's create_dht always adds a signature validator
    node = hivemind.DHT(initial_peers=join_addresses(swarm[0]), host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        yield node
    finally:
        node.shutdown()


async def _held_locally(_dht, node) -> list[dict]:
    """The metrics rows in a node's own storage (run inside its DHT process). A node without a signature validator
    cannot read signed rows through `get` (hivemind's get never returns), so look at its storage directly."""
    stored = node.protocol.storage.get(DHTID.generate(source=records.metrics_key(RUN_ID)))
    rows = []
    for _subkey, item in (stored.value.items() if stored is not None else ()):
        try:
            rows.append(msgpack.unpackb(item.value))
        except msgpack.ExtraData as signed:  # the value followed by its [signature:...]
            rows.append(signed.unpacked)
    return rows


def test_honest_nodes_refuse_forged_and_malformed_records_from_a_node_without_validators(swarm, rogue):
    alice, bob, (alice_key, _) = swarm
    assert store(alice, alice_key, metrics_row(alice.peer_id.to_base58(), samples_total=77))
    forged = metrics_row(alice.peer_id.to_base58(), samples_total=10**9, time=float(get_dht_time()) + 5)
    store(rogue, alice_key, forged)  # honest replicas answer False, but the rogue keeps it: it validates nothing
    store(rogue, b"rogue-subkey", metrics_row("QmRogue", samples_total=-5))
    held = rogue.run_coroutine(_held_locally)
    assert {row["samples_total"] for row in held if row} >= {10**9, -5}, "the rogue serves both records"
    time.sleep(0.5)
    for reader in (alice, bob):
        seen = read_metrics(reader)
        assert seen[alice.peer_id.to_base58()].samples_total == 77
        assert "QmRogue" not in seen


# ---------------------------------------------------------------------------------------------------------------
# the caching validators: each exact record checked once, verdicts identical to hivemind's


def _signed_metrics_record(signer, row: dict, expiration: float = 1e10) -> DHTRecord:
    """A metrics record as the owner's DHT node stores it: MSGPack subkey and value, value signed."""
    unsigned = DHTRecord(key=DHTID.generate(source=records.metrics_key(RUN_ID)).to_bytes(),
                         subkey=MSGPackSerializer.dumps(signer.local_public_key),
                         value=MSGPackSerializer.dumps(row), expiration_time=expiration)
    return dataclasses.replace(unsigned, value=signer.sign_value(unsigned))


def test_cached_signature_verdicts_match_hivemind_and_repeats_are_not_verified_again():
    owner = records.CachingSignatureValidator(RSAPrivateKey())
    reader, plain = records.CachingSignatureValidator(RSAPrivateKey()), RSASignatureValidator(RSAPrivateKey())
    genuine = _signed_metrics_record(owner, metrics_row("QmOwner"))
    # the owner's signature moved onto another value, or kept with a later expiration: both forged
    forged_value = dataclasses.replace(genuine, value=genuine.value.replace(b"alice", b"mallo"))
    forged_expiration = dataclasses.replace(genuine, expiration_time=genuine.expiration_time + 1)
    unprotected = dataclasses.replace(genuine, subkey=MSGPackSerializer.dumps("plain"))  # no owner: nothing to verify

    assert reader.validate(genuine) and reader.checks == 1
    for _ in range(3):
        assert reader.validate(genuine)
    assert reader.checks == 1
    for record in (forged_value, forged_expiration, forged_value, genuine, unprotected):
        assert reader.validate(record) == plain.validate(record)
    assert reader.checks == 4  # the second look at the forged value and at the genuine record came from the cache
    assert not reader.validate(forged_value) and not reader.validate(forged_expiration)


def test_cached_schema_verdicts_match_hivemind_and_a_merged_schema_clears_them():
    from hivemind.dht.schema import SchemaValidator
    from hivemind.optim.progress_tracker import TrainingProgressSchema

    signer = RSASignatureValidator(RSAPrivateKey())
    owner = records.owner_peer_id(signer.local_public_key)
    good, bad = metrics_row(owner), metrics_row(owner, epoch=-1)
    cached, plain = records.schema_validators(RUN_ID)[0], SchemaValidator(records._RunSchema, prefix=RUN_ID)
    for row in (good, bad, good, bad):
        record = _signed_metrics_record(signer, row)
        stripped = dataclasses.replace(record, value=signer.strip_value(record))  # as the composite passes it on
        assert cached.validate(stripped) == plain.validate(stripped) == (row is good)
    assert cached.checks == 2

    # hivemind's progress tracker adds its schema later: the first schema validator absorbs it and forgets verdicts
    assert cached.merge_with(SchemaValidator(TrainingProgressSchema, prefix=RUN_ID))
    stripped = dataclasses.replace(record, value=signer.strip_value(record))
    assert not cached.validate(stripped) and cached.checks == 3


def test_the_verdict_cache_is_bounded_and_not_shipped_to_the_dht_process():
    import pickle

    owner = records.CachingSignatureValidator(RSAPrivateKey())
    reader = records.CachingSignatureValidator(RSAPrivateKey(), cache_size=4)
    signed = [_signed_metrics_record(owner, metrics_row(f"QmPeer{i}")) for i in range(6)]
    for record in signed:
        assert reader.validate(record)
    assert len(reader._verdicts) == 4
    assert reader.validate(signed[0]) and reader.checks == 7  # evicted, so verified again

    copy = pickle.loads(pickle.dumps(reader))
    assert len(copy._verdicts) == 0 and copy.validate(signed[5]) and copy.local_public_key == reader.local_public_key
    schema = pickle.loads(pickle.dumps(records.schema_validators(RUN_ID)[0]))
    record = _signed_metrics_record(owner, metrics_row(records.owner_peer_id(owner.local_public_key)))
    assert schema.validate(dataclasses.replace(record, value=owner.strip_value(record)))


def test_a_peer_that_withdrew_its_progress_row_is_not_counted_as_live(swarm):
    # hivemind withdraws a peer's progress row (None) when it shuts down cleanly; its metrics stay fresh a while
    alice, bob, (alice_key, bob_key) = swarm
    progress_key = f"{RUN_ID}_progress"

    def live_seen_by(reader, max_age_s=15.0):
        return records.live_peers(reader.get(records.metrics_key(RUN_ID), latest=True),
                                  reader.get(progress_key, latest=True), get_dht_time(), max_age_s)

    assert store(alice, alice_key, metrics_row(alice.peer_id.to_base58()))
    assert store(bob, bob_key, metrics_row(bob.peer_id.to_base58(), name="bob"))
    assert store(alice, alice_key, dict(epoch=3), key=progress_key)
    assert set(live_seen_by(bob)) == {alice.peer_id.to_base58(), bob.peer_id.to_base58()}
    assert live_seen_by(bob, max_age_s=0.0) == {}  # stale metrics are not live either

    assert store(alice, alice_key, None, key=progress_key)  # alice left
    assert set(live_seen_by(bob)) == {bob.peer_id.to_base58()}
    # a peer that comes back reports progress again, and counts again
    assert store(alice, alice_key, dict(epoch=4), key=progress_key)
    assert set(live_seen_by(bob)) == {alice.peer_id.to_base58(), bob.peer_id.to_base58()}


def test_a_leaving_peers_signed_record_is_read_while_fresh_and_cannot_be_forged(swarm):
    alice, bob, (alice_key, bob_key) = swarm
    key = records.leaving_key(RUN_ID)
    now = float(get_dht_time())
    row = dict(peer_id=alice.peer_id.to_base58(), epoch=21, time=now)
    assert store(alice, alice_key, row, key=key)
    assert not store(bob, alice_key, dict(row, epoch=99), key=key), "only alice's key writes under alice's subkey"
    assert not store(bob, bob_key, dict(row, epoch=-1), key=key), "the schema holds"
    leaving = records.parse_leaving(bob.get(key, latest=True), now=now + 1)
    assert leaving == {alice.peer_id.to_base58(): records.LeavingRecord(**row)}
    assert records.parse_leaving(bob.get(key, latest=True), now=now + 60) == {}  # stale: it has left since
