"""A coordinator launched again on a run that already published versions goes on from the newest one.

Seen before these tests: a run stopped at max_epochs 200 was launched again with the same --state-dir; the
coordinator announced no version, a volunteer started from random weights at epoch 0, and the coordinator
republished epoch-000060, -000067, ... over the run's versions, moved `latest` back to epoch 99 and trained past
the limit it had reached.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from coordinator_process import RunFolder, get_json, join, launch, read_announcement, tree_digest
from cli_process import CliProcess, write_test_recipe


@pytest.mark.timeout(240)
def test_a_relaunched_coordinator_announces_the_newest_version_and_goes_on_from_its_epoch(tmp_path):
    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "restart-resume", max_epochs=200)
    versions = run.publish_versions(recipe, [5, 10])
    (run.checkpoints / "latest").write_text("epoch-000005\n")  # killed between the version and its pointer
    run.credit_epochs("restart-resume", range(0, 9))
    published = tree_digest(run.checkpoints / "epoch-000010") | tree_digest(run.checkpoints / "epoch-000005")

    coordinator = launch(run, recipe)
    try:
        address = coordinator.wait_for(r"swarm join --initial-peers (\S+)", timeout_s=180).group(1)
        dashboard = coordinator.wait_for(r"Dashboard: (http://\S+/) ", timeout_s=10).group(1)
        announcement = read_announcement(address, "restart-resume")
        # a volunteer who finds nobody training starts from this version (peer/volunteer.py), not from scratch
        assert announcement.latest_version == str(versions[10].resolve())
        assert announcement.latest_version_epoch == 10
        assert announcement.ledger_epoch == 8
        status = get_json(dashboard + "api/status")
        assert (status["epoch"], status["last_checkpoint_epoch"], status["status"]) == (10, 10, "running"), status
        assert (run.checkpoints / "latest").read_text() == "epoch-000010\n"

        coordinator.interrupt()
        # no peer is alive: nothing to fetch, so no 90 s of retries before it exits
        assert coordinator.wait(timeout_s=45) == 0, coordinator.output[-3000:]
    finally:
        coordinator.stop()
    assert "Traceback" not in coordinator.output
    assert "No peer is alive to send its state: the newest published version (epoch 10) stands" in coordinator.output
    # stopped is not finished: volunteers may still be training, and a restart follows them again
    assert "Run over" not in coordinator.output and "Coordinator stopped (stopped by SIGINT)" in coordinator.output
    assert run.status()["status"] == "stopped"
    assert json.loads(run.summary.read_text())["status"] == "stopped"
    assert tree_digest(run.checkpoints / "epoch-000010") | tree_digest(run.checkpoints / "epoch-000005") == published
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch-000005", "epoch-000010", "latest"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_relaunch_from_another_working_folder_follows_the_runs_versions_and_ledger(tmp_path):
    """checkpoint.dir is relative to the working folder: relaunched from another one with the run's --state-dir,
    the coordinator opened an empty ledger there with the run's signing key and started over at epoch 0."""
    first_folder, other_folder = tmp_path / "organiser", tmp_path / "elsewhere"
    other_folder.mkdir()
    run = RunFolder(first_folder / "runs" / "restart-cwd")  # where the recipe's relative checkpoint.dir points
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "restart-cwd", max_epochs=200)
    run.publish_versions(recipe, [5, 10])
    run.credit_epochs("restart-cwd", range(0, 9))
    state = ["--state-dir", str(run.state), "--summary-file", str(run.summary)]

    def launch_from(folder: Path, *extra: str) -> CliProcess:
        number = len(list((run.root / "logs").glob("coordinator-*.log")))
        return CliProcess(["launch", str(recipe), "--host", "127.0.0.1", "--port", "0", "--dashboard-port", "-1",
                           *state, *extra], run.root / "logs" / f"coordinator-{number}.log", cwd=folder)

    for folder in (first_folder, other_folder):
        coordinator = launch_from(folder)
        try:
            address = coordinator.wait_for(r"swarm join --initial-peers (\S+)", timeout_s=180).group(1)
            announcement = read_announcement(address, "restart-cwd")
            assert (announcement.latest_version_epoch, announcement.ledger_epoch) == (10, 8), coordinator.output
            coordinator.interrupt()
            assert coordinator.wait(timeout_s=45) == 0, coordinator.output[-3000:]
        finally:
            coordinator.stop()
    assert f"The run keeps its ledger in {run.ledger} " in coordinator.output, coordinator.output[-3000:]
    assert not (other_folder / "runs").exists()  # nothing forked there
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch-000005", "epoch-000010", "latest"]

    forked = launch_from(other_folder, "--ledger-dir", str(other_folder / "ledger"))
    try:
        assert forked.wait(timeout_s=120) == 2, forked.output[-3000:]
    finally:
        forked.stop()
    assert (f"--ledger-dir {other_folder / 'ledger'}: the run of the state folder {run.state} keeps its ledger in "
            f"{run.ledger}, and a second ledger folder would fork the run" in forked.output), forked.output[-3000:]
    assert "Traceback" not in forked.output and not (other_folder / "ledger").exists()


@pytest.mark.timeout(240)
def test_a_relaunched_coordinator_of_a_run_that_reached_its_limit_says_so_and_trains_nothing(tmp_path):
    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "restart-over", max_epochs=10)
    run.publish_versions(recipe, [5, 10])
    run.credit_epochs("restart-over", range(0, 10))
    run.summary.write_text('{"epochs": 10, "samples_total": 2560}')  # the run's own summary, from its last launch
    before = tree_digest(run.root)

    coordinator = launch(run, recipe)
    try:
        assert coordinator.wait(timeout_s=180) == 0, coordinator.output[-3000:]
    finally:
        coordinator.stop()
    assert re.search(r"Run 'restart-over' already reached limits.max_epochs = 10 before this launch \(its newest "
                     r"version is epoch 10 in \S+\): nothing more to train. To train on, raise the limit",
                     coordinator.output), coordinator.output[-3000:]
    assert "swarm join" not in coordinator.output  # nobody is invited to a run that is over
    assert "Traceback" not in coordinator.output
    after = tree_digest(run.root)
    # the versions, the ledger and the run's summary are as they were; only the coordinator's own state is new
    assert {name: digest for name, digest in after.items() if name.split("/")[0] not in ("coordinator", "logs")} == {
        name: digest for name, digest in before.items() if name.split("/")[0] not in ("coordinator", "logs")}
    assert run.status()["status"] == "finished" and run.status()["last_checkpoint_epoch"] == 10


@pytest.mark.timeout(240)
def test_a_relaunch_of_a_run_the_organiser_ended_names_the_epoch_it_really_ended_at(tmp_path):
    """Ended at epoch 10 (kill -USR1), the run ended at 11: its volunteer finished the epoch it was in. run.json said
    ended_at_epoch 10, and a relaunch said the run had ended at 10 while its final version was of epoch 11."""
    from swarm.recipe import load_recipe

    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "ended-past", max_epochs=200)
    run.publish_versions(recipe, [5, 11])
    run.credit_epochs("ended-past", range(0, 11))
    run.state.mkdir(parents=True, exist_ok=True)  # credit_epochs made it for the signing key
    ended = dict(ended_at_epoch=11, end_set_at_epoch=10, final_version_epoch=11, credited_up_to_epoch=10)
    # a peer seen last time (nothing listens there now): a relaunch that sees no peer wrote an empty list
    seen = ["/ip4/127.0.0.1/tcp/9/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
    (run.state / "run.json").write_text(json.dumps(dict(started_at=1.0, fingerprint=load_recipe(recipe).fingerprint,
                                                        peer_addresses=seen, **ended)))

    coordinator = launch(run, recipe)
    try:
        assert coordinator.wait(timeout_s=180) == 0, coordinator.output[-3000:]
    finally:
        coordinator.stop()
    assert re.search(r"Run 'ended-past' already reached the end the organiser set at epoch 10 before this launch \(it "
                     r"ended at epoch 11; its newest version is epoch 11 in \S+\): nothing more to train. To train on, "
                     r"delete ended_at_epoch from \S+run.json", coordinator.output), coordinator.output[-3000:]
    assert "swarm join" not in coordinator.output and "Traceback" not in coordinator.output
    state = json.loads((run.state / "run.json").read_text())
    assert {key: state.get(key) for key in ended} == ended  # kept as the run left them
    assert state["peer_addresses"] == seen


@pytest.mark.slow  # 26 s of real training: the opt-in job (.ci/run) runs it
@pytest.mark.timeout(300)
def test_a_volunteer_alone_starts_past_the_epochs_the_ledger_credited_already(tmp_path):
    """A coordinator stopped after crediting epochs 0-8 while its newest version was epoch 5, and everyone left. A
    volunteer restarted at epoch 5, and its work in epochs 5-8 could never be credited (those entries exist)."""
    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "credited-ahead", max_epochs=13)
    run.publish_versions(recipe, [5])
    run.credit_epochs("credited-ahead", range(0, 9))
    _, volunteer, _ = _train_to_the_limit(run, recipe, r"starting from the published version of epoch 5 at epoch 9",
                                          timeout_s=240)
    assert "The ledger credits epochs up to 8 already" in volunteer.output
    log = run.root / "ada" / "identity" / "runs" / "credited-ahead" / "contributions.jsonl"
    worked = [json.loads(line)["work"] for line in log.read_text().splitlines()]
    assert worked and min(work["epoch"] for work in worked) == 9, worked
    credited = {entry["epoch"]: entry for entry in _ledger_entries(run.ledger)}
    assert all(credited[epoch]["peer_id"] != "12D3KooWVolunteer" for epoch in range(9, 13)), credited


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_diloco_volunteer_alone_goes_on_from_the_newest_version_at_its_epoch(tmp_path):
    """In DiLoCo mode the volunteer took the version's weights but stayed at epoch 0: it retried loading the swarm's
    epoch until its timeout, or trained rounds 0 onwards again, which the ledger had credited (newcomer tester)."""
    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "diloco-quiet", max_epochs=8)
    document = yaml.safe_load(recipe.read_text())
    document["collaboration"].update(mode="diloco", target_batch_size=64, diloco={"inner_steps": 4})
    recipe.write_text(yaml.safe_dump(document))
    run.publish_versions(recipe, [5])
    run.credit_epochs("diloco-quiet", range(0, 5))
    _, volunteer, _ = _train_to_the_limit(run, recipe, r"starting from the published version of epoch 5",
                                          timeout_s=240)
    assert "Loading the swarm's state (attempt" not in volunteer.output, volunteer.output[-3000:]
    log = run.root / "ada" / "identity" / "runs" / "diloco-quiet" / "contributions.jsonl"
    worked = [json.loads(line)["work"] for line in log.read_text().splitlines()]
    assert worked and min(work["epoch"] for work in worked) == 5, worked
    credited = {entry["epoch"]: entry for entry in _ledger_entries(run.ledger)}
    assert all(credited[epoch]["peer_id"] != "12D3KooWVolunteer" for epoch in range(5, 8)), credited
    assert "reached the swarm only after the coordinator had credited it" not in volunteer.output


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_from_checkpoint_refuses_a_version_of_another_run_and_run_id_one_the_swarm_does_not_serve(tmp_path):
    """A fresh run jumped to the other run's epoch 120 (schedule, limits and ledger with it) and published 125."""
    other = RunFolder(tmp_path / "other")
    versions = other.publish_versions(write_test_recipe(tmp_path / "other.yaml", "other-run", max_epochs=200), [120])
    run = RunFolder(tmp_path / "run")
    coordinator = launch(run, write_test_recipe(tmp_path / "recipe.yaml", "this-run", max_epochs=200))
    volunteer = None
    try:
        address = coordinator.wait_for(r"swarm join --initial-peers (\S+)", timeout_s=180).group(1)
        volunteer = join(run, address, "ada", "--from-checkpoint", str(versions[120]))
        assert volunteer.wait(timeout_s=180) == 2, volunteer.output[-3000:]
        # a mistyped --run-id waited the whole connection timeout (60 s) for a run the swarm does not serve
        mistyped = join(run, address, "bob", "--run-id", "this-rnu")
        assert mistyped.wait(timeout_s=90) == 2, mistyped.output[-3000:]
        assert ("--run-id this-rnu: this swarm serves this-run, not that run" in mistyped.output
                and "Traceback" not in mistyped.output), mistyped.output[-3000:]
        coordinator.interrupt()
        assert coordinator.wait(timeout_s=45) == 0, coordinator.output[-3000:]
    finally:
        if volunteer is not None:
            volunteer.stop()
        coordinator.stop()
    assert (f"--from-checkpoint {versions[120]} is a version of run 'other-run', not of this run 'this-run': give "
            "one of this run's versions" in volunteer.output), volunteer.output[-3000:]
    assert "Traceback" not in volunteer.output and "epoch 120" not in coordinator.output


def test_saving_an_epoch_that_is_already_published_keeps_the_published_version(tmp_path):
    from coordinator.checkpoint import VersionExistsError, latest_version

    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "no-overwrite")
    run.publish_versions(recipe, [60, 200])
    before = tree_digest(run.checkpoints)
    with pytest.raises(VersionExistsError, match="epoch-000060 is already published"):
        run.publish_versions(recipe, [60])
    assert tree_digest(run.checkpoints) == before
    assert not [path for path in run.checkpoints.iterdir() if path.name.startswith(".")]  # no temporary left

    # an older epoch published late (a swarm restarted from an older version) never moves `latest` back
    run.publish_versions(recipe, [67])
    assert (run.checkpoints / "latest").read_text() == "epoch-000200\n"
    assert latest_version(run.checkpoints) == run.checkpoints / "epoch-000200"


@pytest.mark.slow  # real peers for 15-30 s: the opt-in job (.ci/run) runs it
@pytest.mark.timeout(300)
def test_a_relaunched_coordinator_does_not_take_its_own_old_announcement_for_another_coordinator(tmp_path):
    import hivemind

    from swarm import records

    run = RunFolder(tmp_path / "run")
    coordinator = launch(run, write_test_recipe(tmp_path / "recipe.yaml", "own-announcement", max_epochs=100))
    # a node that outlives the coordinator and keeps its announcement, as volunteers' DHT nodes do
    keeper = None
    try:
        address = coordinator.wait_for(r"swarm join --initial-peers (\S+)", timeout_s=180).group(1)
        own_id = address.rsplit("/", 1)[1]
        keeper = hivemind.DHT(initial_peers=[address], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
        coordinator.wait_for(r"swarm epoch 0 \|", timeout_s=30)
        coordinator.interrupt()  # its last announcement ("stopped") reaches the keeper
        assert coordinator.wait(timeout_s=30) == 0, coordinator.output[-3000:]
        found = keeper.get(records.RUNS_KEY, latest=True).value  # unmerged: this coordinator's own row
        stored = records.RunAnnouncement.from_bytes(found[f"own-announcement/{own_id}"].value)
        assert stored.status == "stopped" and stored.coordinator_peer_id == own_id

        # the organiser raises the limit (another recipe fingerprint) and launches again with the same state
        recipe = write_test_recipe(tmp_path / "recipe.yaml", "own-announcement", max_epochs=200)
        relaunched = launch(run, recipe, "--initial-peers", str(keeper.get_visible_maddrs()[0]))
        try:
            relaunched.wait_for(r"swarm join --initial-peers (\S+)", timeout_s=180)
            relaunched.interrupt()
            assert relaunched.wait(timeout_s=30) == 0, relaunched.output[-3000:]
        finally:
            relaunched.stop()
    finally:
        coordinator.stop()
        if keeper is not None:
            keeper.shutdown()
    assert f"/p2p/{own_id}" in relaunched.output  # the same identity, so the same peer id
    assert "alongside coordinator" not in relaunched.output
    assert "already served with another recipe" not in relaunched.output


def _train_to_the_limit(run: RunFolder, recipe, volunteer_says: str | None = None, timeout_s: float = 400):
    """Launch the coordinator and one volunteer, ada, and let the run end at its limit: (coordinator, volunteer, the
    match of `volunteer_says`, which the volunteer must print while it trains)."""
    coordinator = launch(run, recipe)
    try:
        address = coordinator.wait_for(r"swarm join --initial-peers (\S+)", timeout_s=180).group(1)
        volunteer = join(run, address, "ada")
        try:
            said = volunteer.wait_for(volunteer_says, timeout_s=180) if volunteer_says else None
            assert coordinator.wait(timeout_s=timeout_s) == 0, coordinator.output[-3000:]
            assert volunteer.wait(timeout_s=120) == 0, volunteer.output[-3000:]
        finally:
            volunteer.stop()
    finally:
        coordinator.stop()
    return coordinator, volunteer, said


def _ledger_entries(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "entries.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_whose_limit_is_raised_trains_on_from_its_newest_version_and_keeps_every_version(tmp_path):
    """The reported restart, end to end, with a real volunteer: it must start from the newest version, not from
    random weights at epoch 0, and its new epochs must be published as new versions and credited."""
    from swarm.ledger import verify_ledger

    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "raised-limit", max_epochs=6)
    _train_to_the_limit(run, recipe)
    final = max(run.checkpoints.glob("epoch-*"))
    assert final.name == "epoch-000006", sorted(run.checkpoints.iterdir())
    # the final version carries the head of the credit settled at the end of the run, not the ledger's head before it
    head = json.loads((final / "ledger" / "head.json").read_text())
    assert head["tree_size"] == len(_ledger_entries(run.ledger))
    assert {entry["epoch"] for entry in _ledger_entries(run.ledger)} >= {0, 1, 2, 3, 4, 5}
    assert verify_ledger(run.ledger, final).ok
    first_run = {version.name: tree_digest(version) for version in run.checkpoints.glob("epoch-*")}

    recipe = write_test_recipe(tmp_path / "recipe.yaml", "raised-limit", max_epochs=12)  # the organiser trains on
    _, volunteer, started = _train_to_the_limit(run, recipe, r"starting from the published version of epoch (\d+)")
    assert int(started.group(1)) == 6
    assert "No peer is ahead of this one: starting from the recipe's initial weights" not in volunteer.output
    # every version of the first launch is still there, byte for byte; the new ones come after them
    assert {name: tree_digest(run.checkpoints / name) for name in first_run} == first_run
    new_versions = sorted(v.name for v in run.checkpoints.glob("epoch-*") if v.name not in first_run)
    assert new_versions and new_versions[-1] == "epoch-000012", new_versions
    assert all(name > "epoch-000006" for name in new_versions)
    assert (run.checkpoints / "latest").read_text() == "epoch-000012\n"
    # the epochs trained after the restart are credited: their claims come after what the ledger had
    entries = _ledger_entries(run.ledger)
    assert sum(e["granted_samples"] for e in entries if e["epoch"] >= 7 and e["name"] == "ada") >= 4 * 256, entries
    assert verify_ledger(run.ledger).ok


@pytest.mark.timeout(180)
def test_a_checkpoint_folder_of_another_run_is_refused_not_taken_over(tmp_path):
    """A new run given another run's checkpoint folder (a shared checkpoint.dir without {run_id}, a reused
    --checkpoint-dir) resumed from that run's newest version: it ended at once at that run's limit, and with a higher
    one would have trained on from its weights, writing its versions in among them (found by a newcomer tester)."""
    run = RunFolder(tmp_path / "run")
    run.publish_versions(write_test_recipe(tmp_path / "other.yaml", "other-run", max_epochs=60), [5, 60])
    before = tree_digest(run.checkpoints)
    coordinator = launch(run, write_test_recipe(tmp_path / "recipe.yaml", "this-run", max_epochs=60),
                         dashboard_port=None)
    try:
        assert coordinator.wait(timeout_s=120) == 2, coordinator.output[-3000:]
    finally:
        coordinator.stop()
    assert (f"error: the checkpoint folder {run.checkpoints} holds versions of run 'other-run', not of 'this-run' "
            "(newest: epoch-000060): give this run its own folder" in coordinator.output), coordinator.output[-3000:]
    assert "Traceback" not in coordinator.output and tree_digest(run.checkpoints) == before


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_relaunch_may_change_how_the_run_is_steered_but_not_its_training_while_volunteers_train(tmp_path):
    """Found by a newcomer tester: (1) relaunched with a new optimizer.lr while a volunteer trained, the coordinator
    warned and went on: volunteers joining took the new lr and averaged with the one on the old, and versions were
    labelled with a recipe they were not trained with; (2) relaunched with raised limits (the README's way to train
    on), it restarted the run's clock and wiped the dashboard's history, and a running volunteer still stopped at the
    old limit."""
    import socket

    import yaml

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "steered", max_epochs=400)
    coordinator = launch(run, recipe, port=port)
    volunteer = None
    try:
        address = coordinator.wait_for(r"swarm join --initial-peers (\S+)", timeout_s=180).group(1)
        volunteer = join(run, address, "ada")
        volunteer.wait_for(r"epoch ([3-9]|\d\d) ", timeout_s=180)
        coordinator.interrupt()
        assert coordinator.wait(timeout_s=60) == 0, coordinator.output[-3000:]
        started_at = json.loads((run.state / "run.json").read_text())["started_at"]
        history = json.loads((run.state / "history.json").read_text())
        assert len(history) >= 2, history

        changed = yaml.safe_load(recipe.read_text())
        changed["optimizer"]["lr"] *= 2
        lr_recipe = tmp_path / "lr.yaml"
        lr_recipe.write_text(yaml.safe_dump(changed))
        refused = launch(run, lr_recipe, port=port)
        assert refused.wait(timeout_s=180) == 2, refused.output[-3000:]
        assert ("1 volunteer(s) are training run 'steered' with the recipe it was launched with, and this one changes "
                "the training (optimizer.lr)" in refused.output), refused.output[-3000:]
        assert "Traceback" not in refused.output and volunteer.popen.poll() is None

        steered = yaml.safe_load(recipe.read_text())
        steered["limits"]["max_epochs"] = 500
        steered["run"]["description"] = "trained on for longer"
        steered_recipe = tmp_path / "steered.yaml"
        steered_recipe.write_text(yaml.safe_dump(steered))
        coordinator = launch(run, steered_recipe, port=port)
        coordinator.wait_for(r"swarm join --initial-peers", timeout_s=180)
        assert ("The recipe changed since the last launch in limits.max_epochs, run.description: the run goes on"
                in coordinator.output), coordinator.output[-3000:]
        volunteer.wait_for(r"The organiser changed limits.max_epochs, run.description: this peer follows",
                           timeout_s=120)
        assert json.loads((run.state / "run.json").read_text())["started_at"] == started_at
        kept = json.loads((run.state / "history.json").read_text())
        assert kept[:len(history)] == history, (history, kept)
    finally:
        coordinator.stop()
        if volunteer is not None:
            volunteer.stop()
