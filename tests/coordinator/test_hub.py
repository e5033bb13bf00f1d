"""Publishing versions to a Hub repo, against a real HTTP server on 127.0.0.1 that speaks the Hub's API.

Nothing here may leave the machine: every test runs with name resolution limited to loopback, and
huggingface_hub's defaults (endpoint, Xet, telemetry, offline mode) are pointed at the fake Hub.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers
from fake_hub import READ_TOKEN, FakeHub

from coordinator.checkpoint import VersionInfo, save_version
from coordinator.hub import HubPublisher, HubRunConflictError, hub_token_from_env, version_tag
from swarm.errors import SwarmError
from swarm.recipe import Recipe
from swarm.tokenizer import ByteTokenizer

REPO_ID = "swarm-test/tiny-gpt2"

# huggingface_hub's own LFS upload passes a file as `data=`, which its HTTP library deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse to resolve any host but loopback, so a stray request to huggingface.co fails loudly."""
    resolve = socket.getaddrinfo

    def resolve_loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"the test blocked a connection to {host!r}: nothing may leave 127.0.0.1")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve_loopback_only)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with FakeHub(tmp_path / "fake-hub") as fake:
        fake.patch_client(monkeypatch)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        yield fake


@pytest.fixture
def publisher(hub):
    with HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url, retry_delay_s=0.2) as publisher:
        yield publisher


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Two real versions of a tiny GPT-2 (epochs 1 and 2, different weights) and their expected state dicts."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=259, n_positions=32, bos_token_id=1, eos_token_id=1
    )
    model = transformers.GPT2LMHeadModel(config)
    recipe = Recipe(run={"id": "t"})
    tokenizer = ByteTokenizer().to_transformers()
    folder = tmp_path_factory.mktemp("checkpoints")
    saved = []
    for epoch in (1, 2):
        if epoch == 2:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.25)
        info = VersionInfo(
            epoch=epoch,
            samples_seen=64 * epoch,
            val_loss=5.0 / epoch,
            recipe_fingerprint=recipe.fingerprint,
            data_digest="0" * 64,
            data_description="test bytes",
        )
        version_dir = save_version(folder, model, tokenizer, recipe, info)
        saved.append((version_dir, {name: tensor.clone() for name, tensor in model.state_dict().items()}))
    return saved


@pytest.fixture
def log_records():
    """Records of the swarm.coordinator logger, whether or not `setup_logging` cut it off from the root logger."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("swarm.coordinator")
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(previous_level)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        path.relative_to(folder).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)


def test_every_published_version_loads_by_tag_and_the_newest_by_default(hub, publisher, versions, tmp_path):
    (first_dir, first_weights), (second_dir, second_weights) = versions

    first_commit = publisher.publish(first_dir, epoch=1)
    second_commit = publisher.publish(second_dir, epoch=2)

    assert first_commit == hub.resolve(REPO_ID, "epoch-000001").oid
    assert second_commit == hub.resolve(REPO_ID, "epoch-000002").oid == hub.resolve(REPO_ID, "main").oid
    history = hub.history(REPO_ID)
    assert len(history) == 3 and history[:2] == [second_commit, first_commit]  # the repo's first, then one each

    cache_dir = tmp_path / "hf-home" / "hub"
    expected_by_revision = {"epoch-000001": first_weights, "epoch-000002": second_weights, None: second_weights}
    for revision, expected in expected_by_revision.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(REPO_ID, revision=revision, cache_dir=cache_dir)
        assert_same_weights(model, expected)
    assert list(cache_dir.glob("models--swarm-test--tiny-gpt2/snapshots/*/model.safetensors"))

    for revision, version_dir in (("main", second_dir), ("epoch-000001", first_dir)):
        card = huggingface_hub.hf_hub_download(REPO_ID, "README.md", revision=revision, cache_dir=cache_dir)
        assert Path(card).read_bytes() == (version_dir / "README.md").read_bytes()
        assert hub.files(REPO_ID, revision)["swarm.json"] == (version_dir / "swarm.json").read_bytes()


@pytest.mark.parametrize("lfs", [True, False], ids=["safetensors-through-lfs", "all-files-inline"])
def test_the_repo_holds_the_version_files_byte_for_byte(tmp_path, monkeypatch, versions, lfs):
    version_dir, _ = versions[0]
    patterns = ("*.safetensors",) if lfs else ()
    with FakeHub(tmp_path / "fake-hub", lfs_patterns=patterns, lfs_threshold_bytes=None) as hub:
        hub.patch_client(monkeypatch)
        commit = HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url).publish(version_dir, epoch=1)

        expected = {path.name: path.read_bytes() for path in version_dir.iterdir()}
        files = hub.files(REPO_ID, commit)
        assert files.pop(".gitattributes")
        assert files == expected
        lfs_uploads = [path for method, path in hub.requests if method == "PUT"]
        assert len(lfs_uploads) == (1 if lfs else 0)
        assert hub.resolve(REPO_ID, commit).tree["model.safetensors"].lfs is lfs


def test_main_mirrors_the_newest_version_while_tags_keep_older_files(hub, publisher, versions, tmp_path):
    (first_dir, _), (second_dir, _) = versions
    first_with_extra = tmp_path / "epoch-000001"
    first_with_extra.mkdir()
    for path in first_dir.iterdir():
        (first_with_extra / path.name).write_bytes(path.read_bytes())
    (first_with_extra / "model-extra.safetensors").write_bytes(b"from an older layout")

    publisher.publish(first_with_extra, epoch=1)
    publisher.publish(second_dir, epoch=2)

    assert "model-extra.safetensors" not in hub.files(REPO_ID, "main")
    assert "model-extra.safetensors" in hub.files(REPO_ID, "epoch-000001")
    assert ".gitattributes" in hub.files(REPO_ID, "main")


def test_publishing_an_epoch_again_moves_its_tag_to_the_new_commit(hub, publisher, versions):
    (first_dir, _), (second_dir, _) = versions
    old_commit = publisher.publish(first_dir, epoch=1)
    new_commit = publisher.publish(second_dir, epoch=1)  # a restarted coordinator saving epoch 1 again

    assert new_commit != old_commit
    assert hub.resolve(REPO_ID, "epoch-000001").oid == new_commit
    assert publisher.publish(second_dir, epoch=1) == new_commit  # nothing changed: no new commit


def test_missing_token_says_to_set_hf_token_for_the_repo(hub, versions, monkeypatch):
    version_dir, _ = versions[0]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert hub_token_from_env() is None
    before = snapshot(version_dir)

    with pytest.raises(SwarmError, match=rf"HF_TOKEN.*{REPO_ID}") as raised:
        HubPublisher(REPO_ID, endpoint=hub.url).publish(version_dir, epoch=1)

    assert "no token" in str(raised.value)
    assert hub.requests == []  # refused before any request
    assert snapshot(version_dir) == before


def test_token_comes_from_hf_token(hub, versions, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.write_token)
    assert hub_token_from_env() == hub.write_token
    assert HubPublisher(REPO_ID, endpoint=hub.url).publish(versions[0][0], epoch=1)


def test_wrong_token_gives_a_swarm_error_and_leaves_the_local_version_untouched(hub, versions):
    version_dir, _ = versions[0]
    before = snapshot(version_dir)

    with pytest.raises(SwarmError) as raised:
        HubPublisher(REPO_ID, token="hf_not_a_real_token", endpoint=hub.url).publish(version_dir, epoch=1)

    message = str(raised.value)
    assert "HF_TOKEN" in message and REPO_ID in message and "401" in message
    assert str(version_dir) in message  # where the version is kept
    assert "hf_not_a_real_token" not in message  # secrets never reach the logs
    assert REPO_ID not in hub.repos
    assert snapshot(version_dir) == before


def test_read_only_token_is_told_to_use_a_write_token(hub, versions):
    with pytest.raises(SwarmError, match=rf"403.*HF_TOKEN.*write access to {REPO_ID}"):
        HubPublisher(REPO_ID, token=READ_TOKEN, endpoint=hub.url).publish(versions[0][0], epoch=1)


def test_unreachable_hub_gives_a_swarm_error_naming_the_endpoint(versions, monkeypatch):
    version_dir, _ = versions[0]
    # no fake Hub here: undo what a test module imported before this one may have set (tests/swarm/test_data.py)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    before = snapshot(version_dir)
    # a port bound but not listening refuses connections, and stays ours while the test runs (a port closed again
    # was once taken by another test's p2p daemon in a full run, which answered)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
        with pytest.raises(SwarmError, match=rf"{REPO_ID} at {endpoint}: could not reach"):
            HubPublisher(REPO_ID, token="hf_any", endpoint=endpoint).publish(version_dir, epoch=1)
    assert snapshot(version_dir) == before


def test_ensure_repo_creates_a_private_repo_when_asked(hub):
    HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url, private=True).ensure_repo()
    assert hub.repos[REPO_ID].private


def test_a_missing_version_folder_is_a_swarm_error(publisher, tmp_path):
    with pytest.raises(SwarmError, match="not a folder"):
        publisher.publish(tmp_path / "epoch-000009", epoch=9)


def test_publish_async_returns_at_once_and_resolves_to_the_commit_id(hub, publisher, versions):
    version_dir, _ = versions[0]
    with hub.paused():  # an upload that blocked the caller would hang here
        started = time.monotonic()
        future = publisher.publish_async(version_dir, epoch=1)
        assert time.monotonic() - started < 1.0
        assert not future.done()

    commit = future.result(timeout=20)
    assert commit == hub.resolve(REPO_ID, version_tag(1)).oid


def test_publish_async_retries_a_failed_upload(hub, publisher, versions, log_records):
    hub.fail_next.append(503)  # the first request of the first try (create_repo, which the client does not retry)

    future = publisher.publish_async(versions[0][0], epoch=1)

    assert future.result(timeout=20) == hub.resolve(REPO_ID, "epoch-000001").oid
    warnings = [record.getMessage() for record in log_records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying in 0.2 s" in warnings[0] and "503" in warnings[0]
    assert publisher.not_uploaded() == []


def test_publish_async_does_not_retry_a_refused_token(hub, versions, log_records):
    """No retry can fix a token the Hub refuses: said once, and the version named at close."""
    publisher = HubPublisher(REPO_ID, token="hf_not_a_real_token", endpoint=hub.url, retry_delay_s=0.1)
    future = publisher.publish_async(versions[0][0], epoch=1)

    with pytest.raises(SwarmError, match="HF_TOKEN"):
        future.result(timeout=20)
    publisher.close()
    levels = [record.levelno for record in log_records]
    assert levels.count(logging.WARNING) == 0 and levels.count(logging.ERROR) == 2  # the refusal, then the list
    assert "1 version was not uploaded" in log_records[-1].getMessage()


# --- one repo, one run: a published version is never replaced -----------------------------------------------------


def uploads_and_tag_changes(hub: FakeHub) -> list[tuple[str, str]]:
    """The requests that upload (preupload, LFS, commit) or create or delete a tag; creating the repo is none."""
    return [(method, path) for method, path in hub.requests
            if method in ("PUT", "DELETE") or (method == "POST" and path != "/api/repos/create")]


@pytest.fixture(scope="module")
def other_run_versions(tmp_path_factory):
    """Versions of another run ("other", another recipe fingerprint) at epochs 3 and 6, as an earlier run left them."""
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=259, n_positions=32)
    recipe = Recipe(run={"id": "other"})
    folder = tmp_path_factory.mktemp("other-checkpoints")
    return {epoch: save_version(folder, transformers.GPT2LMHeadModel(config), ByteTokenizer().to_transformers(),
                                recipe, VersionInfo(epoch=epoch, samples_seen=64, val_loss=None,
                                                    recipe_fingerprint=recipe.fingerprint, data_digest="1" * 64,
                                                    data_description="other bytes"))
            for epoch in (3, 6)}


@pytest.fixture
def repo_of_another_run(hub, other_run_versions):
    with HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url, retry_delay_s=0.2) as other:
        for epoch, version_dir in sorted(other_run_versions.items()):
            other.publish(version_dir, epoch=epoch)
    return dict(hub.repos[REPO_ID].tags), hub.history(REPO_ID)


def test_a_version_is_never_published_over_another_runs_repo(hub, publisher, versions, repo_of_another_run,
                                                             log_records):
    """A new run pointed at a used repo deleted the other run's epoch-000003 tag and took it over, and main mixed
    the two runs."""
    tags, history = repo_of_another_run
    version_dir, _ = versions[0]
    before = snapshot(version_dir)
    hub.requests.clear()

    future = publisher.publish_async(version_dir, epoch=3)
    with pytest.raises(HubRunConflictError) as raised:
        future.result(timeout=20)

    message = str(raised.value)
    assert f"not publishing epoch-000003 to the Hub repo {REPO_ID}: its main holds a version of another run " \
           f"(run 'other', recipe fingerprint {Recipe(run={'id': 'other'}).fingerprint[:16]}" in message
    assert f"The version stays published in {version_dir}" in message and "checkpoint.hub_repo_id" in message
    assert [(record.levelno, record.getMessage()) for record in log_records] == [
        (logging.ERROR, f"{message}. Until that is fixed and the coordinator launched again, no more versions are "
                        "uploaded to the Hub; they are kept in the checkpoint folder")]
    assert hub.repos[REPO_ID].tags == tags and hub.history(REPO_ID) == history
    assert uploads_and_tag_changes(hub) == []
    assert snapshot(version_dir) == before


def test_a_tag_of_another_run_is_never_moved_even_when_main_is_free(hub, publisher, versions, repo_of_another_run):
    tags, _ = repo_of_another_run
    api = huggingface_hub.HfApi(endpoint=hub.url, token=hub.write_token)
    emptied = api.create_commit(REPO_ID, commit_message="Start afresh", operations=[
        huggingface_hub.CommitOperationDelete(path_in_repo=name)
        for name in hub.files(REPO_ID) if name != ".gitattributes"])  # the tags still hold the other run's versions
    hub.requests.clear()

    with pytest.raises(HubRunConflictError, match=r"its tag epoch-000003 holds a version of another run \(run "
                                                  r"'other'"):
        publisher.publish(versions[0][0], epoch=3)

    assert hub.repos[REPO_ID].tags == tags and hub.resolve(REPO_ID, "main").oid == emptied.oid
    assert uploads_and_tag_changes(hub) == []
    assert publisher.publish(versions[0][0], epoch=4) == hub.resolve(REPO_ID, "epoch-000004").oid  # a free tag


def test_ensure_repo_refuses_at_launch_a_repo_that_holds_another_run(hub, repo_of_another_run):
    publisher = HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url)
    ours = Recipe(run={"id": "t"})

    with pytest.raises(HubRunConflictError) as raised:
        publisher.ensure_repo(run_id="t", recipe_fingerprint=ours.fingerprint)

    assert str(raised.value) == (
        f"the Hub repo {REPO_ID} holds versions of another run (run 'other', recipe fingerprint "
        f"{Recipe(run={'id': 'other'}).fingerprint[:16]}; this one is run 't', recipe fingerprint "
        f"{ours.fingerprint[:16]}), and a published version is never replaced: set checkpoint.hub_repo_id in the "
        "recipe to a repo of this run's own (e.g. swarm-test/t), or remove it to publish locally only")
    other = Recipe(run={"id": "other"})
    publisher.ensure_repo(run_id="other", recipe_fingerprint=other.fingerprint)  # the same run, relaunched
    changed = Recipe(run={"id": "other"}, limits={"max_epochs": 7})
    assert changed.fingerprint != other.fingerprint
    with pytest.raises(HubRunConflictError, match="run 'other'"):  # the same id with another recipe is another run
        publisher.ensure_repo(run_id="other", recipe_fingerprint=changed.fingerprint)


def test_ensure_repo_takes_a_new_or_empty_repo_for_any_run(hub):
    publisher = HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url)
    publisher.ensure_repo(run_id="t", recipe_fingerprint=Recipe(run={"id": "t"}).fingerprint)
    publisher.ensure_repo(run_id="u", recipe_fingerprint=Recipe(run={"id": "u"}).fingerprint)  # only .gitattributes
    assert list(hub.files(REPO_ID)) == [".gitattributes"]


def test_each_commit_carries_the_runs_ledger_as_of_its_newest_checkpoint_and_verifies_at_its_tag(hub, tmp_path,
                                                                                                   versions):
    """A version carries only its ledger head; the repo is where the Hub's users find the ledger, so each commit
    uploads the run's ledger next to it: cut at the newest checkpoint (the coordinator may be mid-epoch), with totals
    recomputed, and `swarm ledger verify` of the tag's ledger/ proves it extends the version's head."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from swarm.ledger import Ledger, LedgerEntry, verify_ledger

    def credit(epoch: int) -> list[LedgerEntry]:
        return [LedgerEntry(run_id="t", epoch=epoch, peer_id=f"12D3KooWpeer{n}", name=f"v{n}", team="blue",
                            claimed_samples=64, granted_samples=64, reason="", compute_s=1.0, timestamp=1.7e9)
                for n in range(2)]

    (weights_dir, _), _ = versions
    ledger_dir, checkpoints = tmp_path / "ledger", tmp_path / "checkpoints"
    with Ledger.open(ledger_dir, Ed25519PrivateKey.generate(), run_id="t") as ledger:
        for epoch in (1, 2, 3):
            ledger.commit_epoch(credit(epoch))
        head = ledger.latest_checkpoint
        version = checkpoints / "epoch-000003"
        version.mkdir(parents=True)
        for path in weights_dir.iterdir():
            (version / path.name).write_bytes(path.read_bytes())
        (version / "ledger").mkdir()
        (version / "ledger" / "head.json").write_bytes(head.canonical_bytes() + b"\n")
        (version / "ledger" / "public_key.pem").write_bytes(ledger.public_key_pem)
        for epoch in (4, 5):  # the run goes on before the upload...
            ledger.commit_epoch(credit(epoch))
        ledger.append(credit(6))  # ...and is caught between an epoch's entries and its checkpoint
        with HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url, ledger_dir=ledger_dir) as publisher:
            publisher.publish(version, epoch=3)

    files = hub.files(REPO_ID, "epoch-000003")
    assert files["ledger/head.json"] == (version / "ledger" / "head.json").read_bytes()
    assert files["ledger/entries.jsonl"].count(b"\n") == 10  # epochs 1-5; epoch 6 is not signed yet
    assert files["ledger/checkpoints.jsonl"].count(b"\n") == 5
    assert b"\n12D3KooWpeer1,v1,blue,320,320,5.000,5\n" in files["ledger/totals.csv"]  # 5 signed epochs of 64
    assert {"ledger/README.txt", "ledger/teams.csv", "ledger/public_key.pem"} <= set(files)
    for revision in ("epoch-000003", "main"):
        report = verify_ledger(f"{hub.url}/{REPO_ID}/resolve/{revision}/ledger")
        assert report.ok, report.problem
        assert (report.entries, report.trusted_tree_size, report.trusted_from) == (10, 6, "version head")
        assert "extends the version's ledger head (head.json) of 6 entries" in report.summary()
