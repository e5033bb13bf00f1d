"""Credit ledger throughput, and the coordinator's accounting of 1,000 peers' signed records.

    python benchmarks/ledger.py [--entries 100000] [--entries-per-epoch 100] [--peers 1000] [--epochs 5]
    python benchmarks/ledger.py --quick      # 5k entries, 50 peers x 2 epochs: ~5 s idle, ~15 s under load

Part 1, the ledger: appends `--entries` entries in epochs of `--entries-per-epoch`, one signed checkpoint per
epoch as the coordinator does (two fsyncs and a signature each; totals.csv at most every 5 s), reopens the
ledger (the replay a restarted coordinator does), verifies it all (every leaf, every checkpoint root, signature
and consistency proof), and builds and checks one inclusion proof.

Part 2, accounting: `--peers` simulated volunteers, each with its own RSA signing key (as `swarm join` creates;
`--key-pool N` reuses N keys round-robin when generating them all is too slow, and the results say so), publish
one `ContributionRecord` per epoch for `--epochs` epochs, serialized and signed exactly as their DHT node does
(MSGPack value + hivemind RSASignatureValidator signature, subkey = the owner's public key). The coordinator's
path is then timed per epoch, stage by stage, with the real code: the DHT node's validation of each stored record
(signature check, then swarm's schema validator), the read (`dht.get` strips the signature and decodes each
subkey's value), `records.parse_contributions`, `Accounting.observe_epoch/observe_peer/add_claims/finalize`, and
`Ledger.commit_epoch` of the granted entries. The network (DHT RPCs) is not in the timing.

Part 3, record reads: the validation a DHT node does for one `dht.get` of a key holding 16, 100 or 1,000 signed
progress records (every peer reads hivemind's progress key every few seconds), with hivemind's validator classes
and with swarm's caching ones, on a first read and on reads that find the records unchanged.

Writes benchmarks/results/ledger.{json,md,png}. About 12 s for 100k entries plus ~70 s to create 1,000 RSA keys
and ~10 s of accounting on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import cryptography  # noqa: E402
import pydantic  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_results_dir_option,
    describe_machine,
    load_average,
    machine,
    parse_benchmark_args,
    timestamp,
    write_results,
)
from swarm.ledger import (  # noqa: E402
    CHECKPOINTS_FILE,
    ENTRIES_FILE,
    Ledger,
    LedgerEntry,
    build_inclusion_proof,
    verify_inclusion_proof,
    verify_ledger,
)

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RUN_ID = "bench"
SAMPLES_PER_PEER_EPOCH = 64  # each simulated volunteer's claim per epoch
EPOCH_S = 30.0  # simulated wall time of one swarm epoch


def simulated_epochs(entries: int, entries_per_epoch: int) -> list[list[LedgerEntry]]:
    """Volunteers with realistic ids and names; a few are granted less than they claimed."""
    epochs = []
    for epoch in range(1, entries // entries_per_epoch + 1):
        epochs.append(
            [
                LedgerEntry(
                    run_id=RUN_ID,
                    epoch=epoch,
                    peer_id=f"12D3KooW{peer:044d}",
                    name=f"volunteer-{peer}",
                    team=f"team-{peer % 10}",
                    claimed_samples=4096,
                    granted_samples=4096 if peer % 7 else 2048,
                    reason="" if peer % 7 else "claimed faster than the recipe allows",
                    compute_s=31.25 + peer / 100,
                    timestamp=1_700_000_000.0 + epoch * 30,
                )
                for peer in range(entries_per_epoch)
            ]
        )
    return epochs


def benchmark_ledger(entries: int, entries_per_epoch: int, folder: Path) -> dict[str, dict[str, float]]:
    key = Ed25519PrivateKey.generate()
    epochs = simulated_epochs(entries, entries_per_epoch)
    total = sum(len(epoch) for epoch in epochs)

    start = time.perf_counter()
    with Ledger.open(folder, key, run_id=RUN_ID) as ledger:
        for epoch_entries in epochs:
            ledger.commit_epoch(epoch_entries)
    append_s = time.perf_counter() - start

    start = time.perf_counter()
    Ledger.open(folder, key, run_id=RUN_ID).close()
    reopen_s = time.perf_counter() - start

    start = time.perf_counter()
    report = verify_ledger(folder)
    verify_s = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"the benchmark ledger does not verify: {report.problem}")

    start = time.perf_counter()
    proof = build_inclusion_proof(folder, total // 2)
    prove_s = time.perf_counter() - start
    start = time.perf_counter()
    proof_report = verify_inclusion_proof(proof, pinned_key=key.public_key())
    check_proof_s = time.perf_counter() - start
    if not proof_report.ok:
        raise SystemExit(f"the benchmark proof does not verify: {proof_report.problem}")

    return {
        "append": {
            "entries": total,
            "checkpoints": len(epochs),
            "seconds": round(append_s, 3),
            "entries_per_s": round(total / append_s),
            "ms_per_epoch": round(1000 * append_s / len(epochs), 3),
        },
        "reopen": {"seconds": round(reopen_s, 3), "entries_per_s": round(total / reopen_s)},
        "verify": {
            "seconds": round(verify_s, 3),
            "entries_per_s": round(total / verify_s),
            "checkpoints": report.checkpoints,
        },
        "inclusion_proof": {
            "build_s": round(prove_s, 3),  # includes verifying the whole ledger first
            "check_ms": round(1000 * check_proof_s, 3),
            "audit_path_hashes": len(proof.audit_path),
        },
        "size": {
            "entries_bytes": (folder / ENTRIES_FILE).stat().st_size,
            "checkpoints_bytes": (folder / CHECKPOINTS_FILE).stat().st_size,
            "bytes_per_entry": round((folder / ENTRIES_FILE).stat().st_size / total, 1),
        },
    }


# ------------------------------------------------------------------------------------------------- accounting
@dataclasses.dataclass
class SimulatedPeer:
    peer_id: str
    name: str
    team: str
    signer: object  # hivemind RSASignatureValidator holding the peer's own signing key
    signed_as: str  # the peer id of that key: every node refuses a row naming another (swarm.records)


def simulated_peers(count: int, key_pool: int | None) -> tuple[list[SimulatedPeer], dict]:
    """`count` volunteers; each its own fresh RSA key unless `key_pool` (then keys are reused round-robin)."""
    from hivemind.dht.crypto import RSASignatureValidator
    from hivemind.utils.crypto import RSAPrivateKey

    keys_needed = count if key_pool is None else min(count, key_pool)
    start = time.perf_counter()
    signers = [RSASignatureValidator(RSAPrivateKey()) for _ in range(keys_needed)]
    keygen_s = time.perf_counter() - start
    from swarm.records import owner_peer_id

    owners = [owner_peer_id(signer.local_public_key) for signer in signers]
    # peers sharing a pooled key sign rows under that key's peer id; the accounting tells them apart by their own
    peers = [SimulatedPeer(peer_id=owners[index] if keys_needed == count else f"Qm{index:044d}",
                           name=f"volunteer-{index}", team=f"team-{index % 10}", signer=signers[index % keys_needed],
                           signed_as=owners[index % keys_needed]) for index in range(count)]
    return peers, {"rsa_keys": keys_needed, "keys_shared": keys_needed < count, "keygen_s": round(keygen_s, 2),
                   "keygen_ms_per_key": round(1000 * keygen_s / keys_needed, 1)}


def signed_records(peers: list[SimulatedPeer], epoch: int, now: float) -> tuple[list, float]:
    """Each peer's DHT store of its ContributionRecord for the epochs the ledger lacks (the one just closed and,
    re-published until the ledger has it, the one before), serialized and signed as hivemind's DHTNode.store
    does. Returns (DHTRecords as they reach the coordinator's node, seconds the peers spent signing in all)."""
    from hivemind.dht.routing import DHTID
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils.serializer import MSGPackSerializer

    from swarm.records import ContributionRecord, EpochWork, CONTRIBUTIONS_TTL_S, contributions_key

    key_bytes = DHTID.generate(source=contributions_key(RUN_ID)).to_bytes()
    stored, signing_s = [], 0.0
    for index, peer in enumerate(peers):
        # a few peers claim an implausible rate, so the accounting writes reasons as it would in a real run
        compute_s = 0.001 if index % 97 == 0 else 20.0 + index % 13
        work = [EpochWork(epoch=e, samples=SAMPLES_PER_PEER_EPOCH, micro_steps=4, compute_s=compute_s)
                for e in (epoch - 1, epoch) if e >= 0]
        record = ContributionRecord(peer_id=peer.signed_as, name=peer.name, team=peer.team, version="0.1.0",
                                    epochs=work, time=now)
        dht_record = DHTRecord(key_bytes, MSGPackSerializer.dumps(peer.signer.local_public_key),
                               MSGPackSerializer.dumps(record.dict()), now + CONTRIBUTIONS_TTL_S)
        start = time.perf_counter()
        value = peer.signer.sign_value(dht_record)
        signing_s += time.perf_counter() - start
        stored.append(dataclasses.replace(dht_record, value=value))
    return stored, signing_s


class _Found:
    """What `dht.get(key, latest=True)` returns for a dictionary key: `.value` = {subkey: ValueWithExpiration}."""

    def __init__(self, value: dict):
        self.value = value


def benchmark_accounting(peers_count: int, epochs: int, key_pool: int | None, folder: Path) -> dict:
    from hivemind.dht.validation import CompositeValidator
    from hivemind.utils import ValueWithExpiration
    from hivemind.utils.crypto import RSAPrivateKey
    from hivemind.utils.serializer import MSGPackSerializer

    from coordinator.accounting import Accounting
    from swarm import records
    from swarm.recipe import CreditConfig

    peers, keys = simulated_peers(peers_count, key_pool)
    # the coordinator's DHT node: its own signature validator plus swarm's schema validators (swarm/network.py)
    validator = CompositeValidator([records.CachingSignatureValidator(RSAPrivateKey()),
                                    *records.schema_validators(RUN_ID)])
    accounting = Accounting(run_id=RUN_ID, credit=CreditConfig(max_samples_per_second=1000.0),
                            target_batch_size=peers_count * SAMPLES_PER_PEER_EPOCH, matchmaking_time_s=5.0)
    stages = {name: [] for name in ("validate_on_store", "read_and_decode", "parse_records", "accounting",
                                    "ledger_commit")}
    signing, record_bytes, entries_total, reasons, revalidate_s = [], [], 0, 0, []
    base = 1_700_000_000.0
    with Ledger.open(folder, Ed25519PrivateKey.generate(), run_id=RUN_ID) as ledger:
        for epoch in range(epochs):
            now = base + (epoch + 1) * EPOCH_S
            stored, signing_s = signed_records(peers, epoch, now)
            signing.append(signing_s)
            record_bytes.append(sum(len(r.subkey) + len(r.value) for r in stored) / len(stored))

            start = time.perf_counter()  # every record arrives as an rpc_store and is checked before it is kept
            if not all(validator.validate(record) for record in stored):
                raise SystemExit("a simulated record failed the coordinator's validation")
            stages["validate_on_store"].append(time.perf_counter() - start)
            start = time.perf_counter()  # the same records arriving again in a later read's responses
            if not all(validator.validate(record) for record in stored):
                raise SystemExit("a simulated record failed the coordinator's validation")
            revalidate_s.append(time.perf_counter() - start)

            start = time.perf_counter()  # dht.get(..., latest=True): strip the signature, decode every subkey
            found = {}
            for index, record in enumerate(stored):
                subkey = MSGPackSerializer.loads(record.subkey)
                # peers sharing a pooled key would share one subkey in a real DHT: keep them apart here
                found[(subkey, index) if keys["keys_shared"] else subkey] = ValueWithExpiration(MSGPackSerializer.loads(validator.strip_value(record)),
                                                    record.expiration_time)
            stages["read_and_decode"].append(time.perf_counter() - start)

            start = time.perf_counter()
            parsed = records.parse_contributions(_Found(found))
            stages["parse_records"].append(time.perf_counter() - start)
            if len(parsed) != peers_count:
                raise SystemExit(f"parsed {len(parsed)} of {peers_count} records")
            if keys["keys_shared"]:  # in the order stored
                parsed = [record.copy(update={"peer_id": peer.peer_id}) for record, peer in zip(parsed, peers)]

            start = time.perf_counter()  # one refresh's worth of observations, the claims, then this epoch's grant
            accounting.observe_epoch(epoch, peers_count * SAMPLES_PER_PEER_EPOCH, peers_count * 3.0,
                                     now=now - EPOCH_S / 2)
            accounting.observe_epoch(epoch, peers_count * SAMPLES_PER_PEER_EPOCH, peers_count * 3.0, now=now)
            for record in parsed:
                accounting.observe_peer(record.peer_id, now=now)
                accounting.add_claims(record)
            granted = accounting.finalize(epoch, now=now)
            stages["accounting"].append(time.perf_counter() - start)

            start = time.perf_counter()
            for _, entries in granted:
                ledger.commit_epoch(entries)
                entries_total += len(entries)
                reasons += sum(1 for entry in entries if entry.reason)
            stages["ledger_commit"].append(time.perf_counter() - start)
    report = verify_ledger(folder)
    if not report.ok:
        raise SystemExit(f"the accounting ledger does not verify: {report.problem}")

    from coordinator.coordinator import MONITOR_PERIOD_S

    per_epoch = {name: round(1000 * statistics.fmean(values), 2) for name, values in stages.items()}
    total_ms = sum(per_epoch.values())
    # the coordinator re-reads the whole key at every refresh, not once per epoch; records that reach it from other
    # DHT nodes are validated again on arrival (hivemind's _validate_dictionary), local ones are not
    refresh_ms = per_epoch["read_and_decode"] + per_epoch["parse_records"]
    return {
        "peers": peers_count,
        "epochs": epochs,
        "keys": keys,
        "records_per_epoch": peers_count,
        "epochs_per_record": "2 (the epoch just closed and the one before, re-published until the ledger has it)",
        "bytes_per_signed_record": round(statistics.fmean(record_bytes)),
        "bytes_per_epoch_read": round(statistics.fmean(record_bytes) * peers_count),
        "peer_signing_ms_per_record": round(1000 * statistics.fmean(signing) / peers_count, 3),
        "ms_per_epoch": per_epoch,
        "total_ms_per_epoch": round(total_ms, 1),
        "records_per_s": round(peers_count / (total_ms / 1000)),
        "records_per_s_by_stage": {name: round(peers_count / (ms / 1000)) if ms else None
                                   for name, ms in per_epoch.items()},
        "refresh_period_s": MONITOR_PERIOD_S,
        # records from other nodes are validated on arrival; unchanged ones are answered from the verdict cache
        "per_refresh_ms": {"local_read": round(refresh_ms, 1),
                           "remote_read": round(refresh_ms + 1000 * statistics.fmean(revalidate_s), 1),
                           "remote_read_all_records_new": round(refresh_ms + per_epoch["validate_on_store"], 1)},
        "ledger_entries": entries_total,
        "entries_with_reason": reasons,
        "ledger_verified": True,
    }


# ------------------------------------------------------------------------------------------------- record reads
def benchmark_record_reads(sizes: list[int], key_pool: int, reads: int) -> dict:
    """The validation a DHT node does for one `dht.get` of a dictionary key holding n signed progress records.

    Every peer reads hivemind's progress key (one signed `LocalTrainingProgress` per peer) every 0.5-5 s, and
    hivemind checks every entry of every response: the RSA signature, then the schemas. Measured with the
    validators a volunteer's DHT node holds (signature, swarm's run schema, hivemind's progress schema), hivemind's
    own classes against swarm's caching ones (`swarm.records`), on the first read of the records and on reads
    that find them unchanged (the same records come back until their owners store new ones).
    """
    from hivemind.dht.crypto import RSASignatureValidator
    from hivemind.dht.routing import DHTID
    from hivemind.dht.schema import SchemaValidator
    from hivemind.dht.validation import CompositeValidator, DHTRecord
    from hivemind.optim.progress_tracker import LocalTrainingProgress, TrainingProgressSchema
    from hivemind.utils.crypto import RSAPrivateKey
    from hivemind.utils.serializer import MSGPackSerializer

    from swarm import records

    signers = [RSASignatureValidator(RSAPrivateKey()) for _ in range(min(key_pool, max(sizes)))]
    key = DHTID.generate(source=f"{RUN_ID}_progress").to_bytes()

    def progress_records(count: int) -> list:
        signed = []
        for index in range(count):
            signer = signers[index % len(signers)]
            progress = LocalTrainingProgress(peer_id=f"Qm{index:044d}".encode(), epoch=7, samples_accumulated=index,
                                             samples_per_second=41.5, time=1_700_000_000.0 + index,
                                             client_mode=False)
            record = DHTRecord(key, MSGPackSerializer.dumps(signer.local_public_key),
                               MSGPackSerializer.dumps(progress.dict()), 1_700_000_600.0 + index)
            signed.append(dataclasses.replace(record, value=signer.sign_value(record)))
        return signed

    def node_validators(caching: bool) -> CompositeValidator:
        if caching:  # as swarm/network.py and the volunteer set them up; hivemind's tracker adds its schema last
            first = [records.CachingSignatureValidator(RSAPrivateKey()), *records.schema_validators(RUN_ID)]
        else:
            first = [RSASignatureValidator(RSAPrivateKey()), SchemaValidator(records._RunSchema, prefix=RUN_ID)]
        return CompositeValidator([*first, SchemaValidator(TrainingProgressSchema, prefix=RUN_ID)])

    rows = []
    for count in sizes:
        signed = progress_records(count)
        for caching in (False, True):
            first = []
            for _ in range(5):  # a fresh node each time: the median of 5 first reads
                validator = node_validators(caching)
                gc.collect()  # a collection left over from the set-up is not the read's
                start = time.perf_counter()
                if not all(validator.validate(record) for record in signed):
                    raise SystemExit("a simulated progress record failed validation")
                first.append(time.perf_counter() - start)
            first_s = statistics.median(first)
            gc.collect()
            start = time.perf_counter()
            for _ in range(reads):
                if not all(validator.validate(record) for record in signed):
                    raise SystemExit("a simulated progress record failed validation")
            repeat_s = (time.perf_counter() - start) / reads
            rows.append({"records": count, "validators": "swarm (caching)" if caching else "hivemind",
                         "first_read_ms": round(1000 * first_s, 2), "repeat_read_ms": round(1000 * repeat_s, 2),
                         "repeat_us_per_record": round(1e6 * repeat_s / count, 1)})
    for row in rows:
        base = next(r for r in rows if r["records"] == row["records"] and r["validators"] == "hivemind")
        row["repeat_speedup_vs_hivemind"] = round(base["repeat_read_ms"] / row["repeat_read_ms"], 2)
        row["first_read_vs_hivemind"] = round(row["first_read_ms"] / base["first_read_ms"], 2)
    return {"rows": rows, "rsa_keys": len(signers), "repeat_reads": reads}


# ------------------------------------------------------------------------------------------------- output
STAGE_NAMES = {
    "validate_on_store": "validate on store (RSA signature + schema)",
    "read_and_decode": "read: strip signature, decode",
    "parse_records": "records.parse_contributions",
    "accounting": "Accounting: observe, add_claims, finalize",
    "ledger_commit": "Ledger.commit_epoch (append + signed checkpoint)",
}


def markdown(settings: dict, results: dict, info: dict) -> str:
    ledger = results["ledger"]
    rows = [
        ("append (1 signed checkpoint per epoch)", f"{ledger['append']['entries_per_s']:,} entries/s",
         f"{ledger['append']['seconds']} s, {ledger['append']['ms_per_epoch']} ms per epoch"),
        ("reopen (replay after a restart)", f"{ledger['reopen']['entries_per_s']:,} entries/s",
         f"{ledger['reopen']['seconds']} s"),
        ("verify everything", f"{ledger['verify']['entries_per_s']:,} entries/s",
         f"{ledger['verify']['seconds']} s, {ledger['verify']['checkpoints']} checkpoints"),
        ("check one inclusion proof", f"{ledger['inclusion_proof']['check_ms']} ms",
         f"{ledger['inclusion_proof']['audit_path_hashes']} hashes in the audit path"),
    ]
    lines = [
        "# Credit ledger and coordinator accounting",
        "",
        f"{describe_machine(info)}. `{settings['command'].strip()}`, {settings['date']}.",
        "",
        f"## Ledger: {settings['entries']:,} entries, {settings['entries_per_epoch']} per epoch",
        "",
        f"{ledger['size']['bytes_per_entry']} bytes per entry.",
        "",
        "| operation | rate | detail |",
        "|---|---|---|",
        *(f"| {name} | {rate} | {detail} |" for name, rate, detail in rows),
    ]
    accounting = results.get("accounting")
    if accounting:
        keys = accounting["keys"]
        key_note = (f"{keys['rsa_keys']} RSA keys shared round-robin by {accounting['peers']} peers"
                    if keys["keys_shared"] else f"one RSA key per peer ({keys['rsa_keys']} keys)")
        lines += [
            "",
            f"## Coordinator accounting: {accounting['peers']:,} peers x {accounting['epochs']} epochs",
            "",
            f"Each peer's signed `ContributionRecord` per epoch ({accounting['bytes_per_signed_record']} bytes with "
            f"its subkey and signature; {accounting['bytes_per_epoch_read'] / 1e6:.2f} MB for the whole key per read), "
            f"{key_note}, created in {keys['keygen_s']} s ({keys['keygen_ms_per_key']} ms per key); peers sign at "
            f"{accounting['peer_signing_ms_per_record']} ms per record. Per epoch, on the coordinator (mean over "
            f"epochs; DHT network time not included):",
            "",
            "| stage | ms per epoch | records/s |",
            "|---|---|---|",
            *(f"| {STAGE_NAMES[name]} | {ms} | {accounting['records_per_s_by_stage'][name]:,} |"
              for name, ms in accounting["ms_per_epoch"].items()),
            f"| **total** | **{accounting['total_ms_per_epoch']}** | **{accounting['records_per_s']:,}** |",
            "",
            f"{accounting['ledger_entries']:,} ledger entries written ({accounting['entries_with_reason']} with a "
            "reason: ~1% of peers claim an implausible rate); the ledger verifies.",
            "",
            f"The coordinator re-reads the contributions key every {accounting['refresh_period_s']:g} s, not once per "
            f"epoch: read + parse of all {accounting['peers']:,} records is "
            f"{accounting['per_refresh_ms']['local_read']} ms when its own node holds them, and "
            f"{accounting['per_refresh_ms']['remote_read']} ms when they come from other DHT nodes unchanged since "
            "the last read (the node checks every received record; swarm's validators answer a record they have "
            f"seen from their cache), {accounting['per_refresh_ms']['remote_read_all_records_new']} ms if every "
            "record were new. The metrics key (one `PeerMetrics` per peer) is read at the same rate and is not "
            "measured here.",
        ]
    reads = results.get("record_reads")
    if reads:
        lines += [
            "",
            "## Reading a key of n signed progress records: what a DHT node validates per `dht.get`",
            "",
            f"One signed hivemind progress record per peer ({reads['rsa_keys']} RSA keys shared round-robin); every "
            "record of a response is checked (signature, swarm's run schema, hivemind's progress schema). hivemind's "
            "validator classes against swarm's caching ones; first read: the median of 5 fresh nodes; a repeat read "
            f"finds the records unchanged (mean of {reads['repeat_reads']} reads):",
            "",
            "| records | validators | first read, ms | repeat read, ms | per record, us | repeat read speed vs hivemind |",
            "|---|---|---|---|---|---|",
            *(f"| {r['records']:,} | {r['validators']} | {r['first_read_ms']} | {r['repeat_read_ms']} | "
              f"{r['repeat_us_per_record']} | {r['repeat_speedup_vs_hivemind']}x |" for r in reads["rows"]),
        ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    accounting = results["accounting"]
    names = list(accounting["ms_per_epoch"])
    figure, axis = plt.subplots(figsize=(8, 3.6))
    axis.barh([STAGE_NAMES[n] for n in names], [accounting["ms_per_epoch"][n] for n in names])
    axis.invert_yaxis()
    axis.set_xlabel(f"ms per epoch, {accounting['peers']:,} peers")
    axis.set_title(f"coordinator accounting: {accounting['total_ms_per_epoch']} ms per epoch "
                   f"({accounting['records_per_s']:,} records/s)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5k entries, 50 peers x 2 epochs (smoke test).")
    parser.add_argument("--entries", type=int, default=None, help="Entries to append and verify (100000).")
    parser.add_argument("--entries-per-epoch", type=int, default=100, help="Entries per signed checkpoint.")
    parser.add_argument("--peers", type=int, default=None, help="Simulated peers for the accounting (1000).")
    parser.add_argument("--epochs", type=int, default=None, help="Epochs of accounting (5).")
    parser.add_argument("--key-pool", type=int, default=None,
                        help="Reuse this many RSA keys round-robin instead of one per peer (faster set-up).")
    parser.add_argument("--folder", type=Path, default=None, help="Where to write the ledgers (default: a temp dir).")
    parser.add_argument("--name", default="ledger", help="Results file stem.")
    add_results_dir_option(parser)
    args = parse_benchmark_args(parser, argv)
    if args.entries is not None and args.entries < 1:
        parser.error(f"--entries {args.entries}: at least 1 (leave it out for 100000)")
    args.entries = args.entries or (5_000 if args.quick else 100_000)
    args.peers = args.peers or (50 if args.quick else 1000)
    args.epochs = args.epochs or (2 if args.quick else 5)
    if args.entries_per_epoch < 1 or args.entries < args.entries_per_epoch:
        parser.error("--entries must be at least --entries-per-epoch, which must be positive")
    if args.peers < 1 or args.epochs < 1:
        parser.error("--peers and --epochs must be at least 1")
    if args.key_pool is not None and args.key_pool < 1:
        parser.error("--key-pool must be at least 1 (or leave it out: one key per peer)")

    info = machine()
    parent = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=args.folder))
    try:
        ledger_results = benchmark_ledger(args.entries, args.entries_per_epoch, parent / "ledger")
        accounting_results = benchmark_accounting(args.peers, args.epochs, args.key_pool, parent / "accounting")
        read_sizes = [16, 100] if args.quick else [16, 100, 1000]
        reads_results = benchmark_record_reads(read_sizes, key_pool=args.key_pool or 32,
                                               reads=20 if args.quick else 100)
    finally:
        shutil.rmtree(parent, ignore_errors=True)

    settings = {
        "entries": args.entries // args.entries_per_epoch * args.entries_per_epoch,
        "entries_per_epoch": args.entries_per_epoch,
        "peers": args.peers,
        "epochs": args.epochs,
        "key_pool": args.key_pool,
        "folder": str(parent.parent),
        "quick": args.quick,
        "date": timestamp(),
        "command": "python benchmarks/ledger.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "library_versions": {"cryptography": cryptography.__version__, "pydantic": pydantic.VERSION},
    }
    info["load_average_at_end"] = load_average()
    results = {"ledger": ledger_results, "accounting": accounting_results, "record_reads": reads_results}
    text = markdown(settings, results, info)
    write_results(args.name, settings, results, text, plot=lambda path: plot(results, path), machine_info=info,
                  results_dir=args.results_dir)
    print(text)


if __name__ == "__main__":
    main()
