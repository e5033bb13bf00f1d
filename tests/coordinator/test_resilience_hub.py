"""The Hub away and back: versions queued while it is down are uploaded once it answers, none blocks the others,
and what never made it is named at shutdown with the command that uploads it later.

Against the real HTTP fake of the Hub (fake_hub.py), switched down and up while the publisher runs. Delays are
tenths of seconds here; an organiser's are minutes (60 s doubling up to 10 min).
"""

from __future__ import annotations

import json
import logging
import shutil
import time

import pytest
import torch
import transformers
from fake_hub import FakeHub
from test_hub import REPO_ID, hub, log_records, loopback_only, versions  # noqa: F401  (fixtures)

from coordinator.checkpoint import VersionInfo, save_version
from coordinator.hub import (HubConfigError, HubPublisher, HubRunConflictError, HubUnavailableError,
                             publish_versions, version_tag)
from swarm.errors import UsageError
from swarm.recipe import Recipe
from swarm.tokenizer import ByteTokenizer

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


def quick_publisher(hub: FakeHub, **kwargs) -> HubPublisher:
    """Retries 0.05 s apart at first, at most 0.2 s: the organiser's 60 s and 10 min, scaled down."""
    options = dict(retry_delay_s=0.05, max_retry_delay_s=0.2, request_timeout_s=5.0)
    return HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url, **{**options, **kwargs})


def tagged(hub: FakeHub, epoch: int) -> bool:
    return version_tag(epoch) in hub.repos.get(REPO_ID, type("none", (), {"tags": {}})).tags


def epoch_on_main(hub: FakeHub) -> int:
    import json

    return json.loads(hub.files(REPO_ID, "main")["swarm.json"])["epoch"]


def wait_until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_version_that_failed_many_times_is_uploaded_once_the_hub_is_back(hub, versions, log_records):
    """It was tried twice, 60 s apart, then given up: an outage of two minutes lost the version on the Hub."""
    hub.go_down()
    publisher = quick_publisher(hub)
    future = publisher.publish_async(versions[0][0], epoch=1)
    wait_until(lambda: sum("Hub upload of epoch-000001 failed" in r.getMessage() for r in log_records) >= 3)
    assert not future.done()
    hub.come_back()

    assert future.result(timeout=20) == hub.resolve(REPO_ID, "epoch-000001").oid
    publisher.close()
    retries = [r.getMessage() for r in log_records if "Hub upload of epoch-000001 failed" in r.getMessage()]
    assert all(r.levelno == logging.WARNING for r in log_records if r.getMessage() in retries)
    assert "could not reach it" in retries[0] and "retrying in" in retries[0], retries[0]
    assert not [r for r in log_records if r.levelno >= logging.ERROR]


def test_the_retry_delay_doubles_up_to_its_cap(hub, versions, log_records):
    hub.go_down(503)
    publisher = quick_publisher(hub, retry_delay_s=0.05, max_retry_delay_s=0.2)
    publisher.publish_async(versions[0][0], epoch=1)
    wait_until(lambda: sum("retrying in" in r.getMessage() for r in log_records) >= 5)
    hub.come_back()
    publisher.close()
    delays = [r.args for r in log_records if "retrying in" in r.getMessage()]
    said = [float(r.getMessage().split("retrying in ")[1].split(" s")[0]) for r in log_records
            if "retrying in" in r.getMessage()]
    assert said[:5] == [0.05, 0.1, 0.2, 0.2, 0.2], (said, delays)


def test_a_newer_version_is_not_blocked_behind_an_old_one_that_keeps_failing(hub, versions):
    (first_dir, _), (second_dir, _) = versions
    hub.fail_containing[b"Publish epoch-000001"] = 500  # the commit of epoch 1 only
    publisher = quick_publisher(hub)
    first = publisher.publish_async(first_dir, epoch=1)
    second = publisher.publish_async(second_dir, epoch=2)

    assert second.result(timeout=20) == hub.resolve(REPO_ID, "epoch-000002").oid
    assert not first.done() and not tagged(hub, 1)
    del hub.fail_containing[b"Publish epoch-000001"]
    assert first.result(timeout=20) == hub.resolve(REPO_ID, "epoch-000001").oid
    publisher.close()
    # the late epoch 1 did not take main from the newest version
    assert epoch_on_main(hub) == 2
    assert hub.files(REPO_ID, "main")["model.safetensors"] == (second_dir / "model.safetensors").read_bytes()


def test_shutdown_names_the_versions_not_uploaded_and_the_command_that_uploads_them(hub, versions, log_records):
    (first_dir, _), (second_dir, _) = versions
    hub.go_down()
    publisher = quick_publisher(hub, retry_delay_s=30.0, max_retry_delay_s=30.0)
    futures = [publisher.publish_async(first_dir, epoch=1), publisher.publish_async(second_dir, epoch=2)]
    wait_until(lambda: sum("retrying in" in r.getMessage() for r in log_records) >= 2)

    started = time.monotonic()
    publisher.close()  # each gets one more try now, not in 30 s
    assert time.monotonic() - started < 10

    assert publisher.not_uploaded() == [1, 2]
    for future in futures:
        with pytest.raises(HubUnavailableError):
            future.result(timeout=1)
    errors = [r.getMessage() for r in log_records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    folder = first_dir.parent
    assert (f"2 versions were not uploaded to the Hub repo {REPO_ID}: epoch-000001, epoch-000002. They are kept in "
            f"{folder}; upload them once the Hub answers with: swarm checkpoint publish --checkpoint-dir {folder} "
            f"--repo {REPO_ID} --all-missing") in errors[0], errors[0]


def test_the_command_that_uploads_them_names_a_ledger_kept_elsewhere(hub, versions, log_records, tmp_path):
    (first_dir, _), _ = versions
    hub.go_down()
    publisher = quick_publisher(hub, retry_delay_s=30.0, ledger_dir=tmp_path / "kept elsewhere")
    future = publisher.publish_async(first_dir, epoch=1)
    wait_until(lambda: any("retrying in" in r.getMessage() for r in log_records))
    publisher.close()
    with pytest.raises(HubUnavailableError):
        future.result(timeout=1)
    error = next(r.getMessage() for r in log_records if r.levelno == logging.ERROR)
    assert (f"swarm checkpoint publish --checkpoint-dir {first_dir.parent} --ledger-dir '{tmp_path / 'kept elsewhere'}'"
            f" --repo {REPO_ID} --all-missing") in error, error


def test_the_next_launch_uploads_first_what_the_last_one_could_not(hub, versions, log_records, tmp_path):
    """A coordinator stopped (or killed) during an outage left its versions to a command the organiser had to run;
    the next launch, with the same state folder, now uploads them first."""
    (first_dir, _), (second_dir, _) = versions
    pending = tmp_path / "state" / "hub_pending.json"
    hub.go_down()
    publisher = quick_publisher(hub, retry_delay_s=30.0, pending_file=pending)
    publisher.publish_async(first_dir, epoch=1)
    publisher.publish_async(second_dir, epoch=2)
    # on disk as soon as it is queued: a kill -9 loses nothing
    assert [v["epoch"] for v in json.loads(pending.read_text())["versions"]] == [1, 2]
    wait_until(lambda: sum("retrying in" in r.getMessage() for r in log_records) >= 2)
    publisher.close()
    error = next(r.getMessage() for r in log_records if r.levelno == logging.ERROR)
    assert error.endswith("(or launch the coordinator again: it uploads them first)"), error
    assert [v["epoch"] for v in json.loads(pending.read_text())["versions"]] == [1, 2]

    hub.come_back()
    gone = tmp_path / "gone" / "epoch-000003"  # a version deleted by hand since: said, and skipped
    state = json.loads(pending.read_text())
    state["versions"].append(dict(epoch=3, folder=str(gone)))
    pending.write_text(json.dumps(state))
    other_repo = quick_publisher(hub, pending_file=pending)
    other_repo.repo_id = "swarm-test/another-repo"
    assert other_repo.publish_pending() == []  # the list is of another repo's uploads
    other_repo.close()
    quick_publisher(hub).publish(first_dir, epoch=1)  # the organiser ran `swarm checkpoint publish --epoch 1`
    commits = len(hub.history(REPO_ID))
    relaunched = quick_publisher(hub, pending_file=pending)
    assert relaunched.publish_pending() == [2]
    assert any(f"{gone} is gone: it cannot be uploaded" in r.getMessage() for r in log_records)
    wait_until(lambda: relaunched.not_uploaded() == [])
    relaunched.close()
    assert tagged(hub, 1) and tagged(hub, 2) and epoch_on_main(hub) == 2
    assert len(hub.history(REPO_ID)) == commits + 1  # epoch 2 only
    assert json.loads(pending.read_text()) == dict(repo_id=REPO_ID, versions=[])


def test_a_hub_that_does_not_answer_in_time_is_an_outage_not_a_hang(hub, versions, log_records):
    hub.answer_delay_s = 3.0
    publisher = quick_publisher(hub, request_timeout_s=0.5)
    started = time.monotonic()
    assert publisher.check_at_launch(run_id="t", recipe_fingerprint=Recipe(run={"id": "t"}).fingerprint) is False
    assert time.monotonic() - started < 2.5
    hub.answer_delay_s = 0.0
    publisher.publish_async(versions[0][0], epoch=1).result(timeout=20)
    publisher.close()


def test_a_repo_of_another_run_found_when_the_hub_comes_back_is_never_uploaded_to(hub, versions, log_records,
                                                                                 tmp_path):
    """Launched during an outage, the run check waits for the Hub; it still refuses another run's repo."""
    other = Recipe(run={"id": "other"})
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=259,
                                                                 n_positions=32))
    their_version = save_version(tmp_path / "theirs", model, ByteTokenizer().to_transformers(), other,
                                 VersionInfo(epoch=7, samples_seen=1, val_loss=None, data_digest="1" * 64,
                                             recipe_fingerprint=other.fingerprint, data_description="other"))
    hub.go_down()
    ours = quick_publisher(hub)
    assert ours.check_at_launch(run_id="t", recipe_fingerprint=Recipe(run={"id": "t"}).fingerprint) is False
    warning = [r.getMessage() for r in log_records if r.levelno == logging.WARNING][-1]
    assert warning.startswith(f"The Hub repo {REPO_ID} could not be checked at launch (could not reach it"), warning
    assert "uploads will be retried" in warning and "\n" not in warning
    hub.come_back()
    HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url).publish(their_version, epoch=7)
    tags_before = dict(hub.repos[REPO_ID].tags)

    future = ours.publish_async(versions[0][0], epoch=1)
    with pytest.raises(HubRunConflictError, match="holds versions of another run"):
        future.result(timeout=20)
    later = ours.publish_async(versions[1][0], epoch=2)  # refused at once: the repo is not this run's
    with pytest.raises(HubRunConflictError):
        later.result(timeout=5)
    ours.close()
    assert hub.repos[REPO_ID].tags == tags_before and epoch_on_main(hub) == 7
    assert ours.not_uploaded() == [1, 2]


def test_a_token_refused_when_the_hub_comes_back_stops_the_uploads_with_the_fix(hub, versions, log_records):
    hub.go_down(503)
    publisher = HubPublisher(REPO_ID, token="hf_not_a_real_token", endpoint=hub.url, retry_delay_s=0.05,
                             max_retry_delay_s=0.1)
    assert publisher.check_at_launch(run_id="t", recipe_fingerprint="f") is False
    future = publisher.publish_async(versions[0][0], epoch=1)
    hub.come_back()
    with pytest.raises(HubConfigError, match="HF_TOKEN"):
        future.result(timeout=20)
    publisher.close()
    errors = [r.getMessage() for r in log_records if r.levelno == logging.ERROR]
    assert "the token was refused (401)" in errors[0] and "no more versions are uploaded" in errors[0], errors
    assert "hf_not_a_real_token" not in " ".join(r.getMessage() for r in log_records)


@pytest.mark.parametrize("token, status, exit_code", [("hf_not_a_real_token", "401", 2), (None, "no token", 2)])
def test_a_configuration_error_at_launch_still_stops_it(hub, token, status, exit_code, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    publisher = HubPublisher(REPO_ID, token=token, endpoint=hub.url)
    with pytest.raises(HubConfigError, match="HF_TOKEN") as raised:
        publisher.check_at_launch(run_id="t", recipe_fingerprint="f")
    assert status in str(raised.value) and raised.value.exit_code == exit_code
    assert isinstance(raised.value, UsageError)


# ---- swarm checkpoint publish ---------------------------------------------------------------------------------


@pytest.fixture
def checkpoint_folder(tmp_path):
    """A run's checkpoint folder with versions 5, 10 and 15, whose recipe names REPO_ID as its Hub repo."""
    recipe = Recipe(run={"id": "t"}, checkpoint={"hub_repo_id": REPO_ID})
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=259,
                                                                 n_positions=32))
    folder = tmp_path / "checkpoints"
    for epoch in (5, 10, 15):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1)
        save_version(folder, model, ByteTokenizer().to_transformers(), recipe,
                     VersionInfo(epoch=epoch, samples_seen=epoch, val_loss=None, data_digest="0" * 64,
                                 recipe_fingerprint=recipe.fingerprint, data_description="bytes"))
    return folder


def test_publish_versions_uploads_the_missing_ones_and_main_ends_on_the_newest(hub, checkpoint_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.write_token)
    first = publish_versions(checkpoint_folder, epochs=[15], endpoint=hub.url)
    assert (first.repo_id, first.uploaded, first.already_there) == (REPO_ID, [15], [])

    again = publish_versions(checkpoint_folder, endpoint=hub.url)  # --all-missing: 5 and 10, 15 is there
    assert (again.uploaded, again.already_there) == ([5, 10], [15])
    assert all(tagged(hub, epoch) for epoch in (5, 10, 15))
    assert epoch_on_main(hub) == 15
    assert publish_versions(checkpoint_folder, endpoint=hub.url).uploaded == []


def test_publish_versions_says_what_is_wrong_with_the_folder_or_the_epoch(hub, checkpoint_folder, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.write_token)
    with pytest.raises(UsageError, match=r"--epoch 7: .* has no version epoch-000007; it has epochs 5, 10, 15"):
        publish_versions(checkpoint_folder, epochs=[7], endpoint=hub.url)
    with pytest.raises(UsageError, match=r"--checkpoint-dir .* holds no version"):
        publish_versions(tmp_path / "empty", endpoint=hub.url)
    local_only = tmp_path / "local-only"
    shutil.copytree(checkpoint_folder, local_only)
    import json

    for version in local_only.glob("epoch-*"):
        metadata = json.loads((version / "swarm.json").read_text())
        metadata["recipe"]["checkpoint"]["hub_repo_id"] = None
        (version / "swarm.json").write_text(json.dumps(metadata))
    with pytest.raises(UsageError, match=r"names no Hub repo .*--repo"):
        publish_versions(local_only, endpoint=hub.url)


def test_publish_versions_during_an_outage_says_to_try_again_later(hub, checkpoint_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.write_token)
    hub.go_down()
    with pytest.raises(HubUnavailableError, match="could not reach it"):
        publish_versions(checkpoint_folder, endpoint=hub.url, request_timeout_s=2.0)


def test_swarm_checkpoint_publish_uploads_the_missing_versions_and_names_bad_flags(hub, checkpoint_folder, tmp_path):
    """The command a stopped coordinator's last line gives, run as the organiser runs it."""
    import os
    import subprocess
    import sys

    environment = dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN=hub.write_token, HF_HUB_DISABLE_XET="1",
                       HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp_path / "hf-home"))
    environment.pop("HF_HUB_OFFLINE", None)

    def swarm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "swarm.cli", "checkpoint", "publish", *args], env=environment,
                              capture_output=True, text=True, timeout=120)

    not_a_ledger = swarm("--checkpoint-dir", str(checkpoint_folder), "--all-missing", "--ledger-dir", str(tmp_path))
    assert not_a_ledger.returncode == 2 and f"--ledger-dir {tmp_path} is not a ledger folder" in not_a_ledger.stderr
    assert "Traceback" not in not_a_ledger.stderr and not hub.repos
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from swarm.ledger import Ledger
    with Ledger.open(checkpoint_folder.parent / "ledger", Ed25519PrivateKey.generate(), run_id="t") as ledger:
        ledger.commit_epoch([])  # where the coordinator keeps it: uploaded with each version without a flag
    done = swarm("--checkpoint-dir", str(checkpoint_folder), "--all-missing")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Uploaded epoch-000005, epoch-000010, epoch-000015 to {REPO_ID}" in done.stdout
    assert all(tagged(hub, epoch) for epoch in (5, 10, 15)) and epoch_on_main(hub) == 15
    assert hub.files(REPO_ID, "epoch-000005")["ledger/checkpoints.jsonl"].count(b"\n") == 1
    # the other messages: test_publish_versions_says_what_is_wrong_with_the_folder_or_the_epoch
    refused = swarm("--checkpoint-dir", str(checkpoint_folder))
    assert refused.returncode == 2 and "error: give --epoch N (repeatable) or --all-missing" in refused.stderr
    assert "Traceback" not in refused.stderr
