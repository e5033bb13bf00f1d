"""A coordinator and real volunteers on loopback, driven through the CLI exactly as people would."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from cli_process import CliProcess, is_running, process_tree

# what a coordinator says when it has saved its final version from a peer's state
FINAL_VERSION_SAVED = r"Published version epoch \d+|Version epoch \d+ is already published"


@pytest.mark.timeout(420)
def test_two_volunteers_average_with_each_other_and_the_loss_goes_down(swarm_factory, recipe_writer, tmp_path):
    swarm = swarm_factory()
    recipe = recipe_writer(tmp_path / "recipe.yaml", "e2e-pair", max_epochs=16)
    coordinator = swarm.launch(recipe)
    first = swarm.join("alice")
    second = swarm.join("bob")

    assert coordinator.wait(timeout_s=360) == 0, coordinator.output[-3000:]
    assert first.wait(timeout_s=120) == 0, first.output[-3000:]
    assert second.wait(timeout_s=120) == 0, second.output[-3000:]

    alice, bob = swarm.stats("alice"), swarm.stats("bob")
    # each peer counts only rounds whose group held two or more peers: both must have averaged with the other
    assert alice["averaged_rounds"] >= 3, alice
    assert bob["averaged_rounds"] >= 3, bob
    for stats in (alice, bob):
        # time spent waiting for the swarm (the steps that ended an epoch) is accounted apart from computing
        assert stats["sync_s"] > 0 and 0 < stats["longest_pause_s"] <= stats["sync_s"], stats
        assert stats["compute_s"] + stats["sync_s"] <= stats["wall_s"], stats
        # every round is counted once by the size of its group; a pair's averaged rounds reached both peers
        assert sum(stats["group_sizes"].values()) == stats["averaged_rounds"] + stats["solo_rounds"], stats
        assert stats["group_sizes"].get("2", 0) == stats["averaged_rounds"], stats
    summary = swarm.summary()
    assert summary["peers"] == 2 and summary["averaged_rounds"] >= 3, summary
    assert summary["epochs"] >= 16
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5, summary
    assert summary["samples_total"] >= 16 * 256
    # every sample a peer trained on reaches the ledger as a claim, within one epoch's worth (the work of the last,
    # unfinished epoch may arrive after the final credit pass; no global step used it)
    assert 0 <= summary["samples_total"] - summary["claimed_samples"] <= 256, summary
    # honest claims are granted, except where two peers that had not yet seen each other both trained the same
    # epoch alone at the start: that epoch is granted once, scaled, and the ledger entry says why
    assert 16 * 256 <= summary["granted_samples"] <= summary["claimed_samples"], summary
    entries = [json.loads(line) for line in (swarm.folder / "ledger" / "entries.jsonl").read_text().splitlines()]
    for entry in entries:
        if entry["granted_samples"] < entry["claimed_samples"]:
            assert entry["reason"].startswith("scaled by"), entry

    # the published model is a plain transformers checkpoint with the swarm's averaged weights
    model = transformers.AutoModelForCausalLM.from_pretrained(swarm.folder / "final")
    assert model.config.n_layer == 2
    assert torch.isfinite(next(model.parameters())).all()
    tokenizer = transformers.AutoTokenizer.from_pretrained(swarm.folder / "final")
    prompt = tokenizer("def ", return_tensors="pt")
    assert prompt["input_ids"].tolist() == [[103, 104, 105, 35]]  # bytes + 3, no eos: ready to continue
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > 4 and tokenizer.decode(generated[0], skip_special_tokens=True).startswith("def ")

    # every published version is kept, loads, and its model card names the ledger root it was published with,
    # which is the root of the signed head it carries, which the run's ledger extends

    from swarm.ledger import verify_ledger

    versions = sorted((swarm.folder / "checkpoints").glob("epoch-*"))
    # every 5 epochs and the final one; a coordinator on a busy machine may first see the swarm at epoch 9, and then
    # publishes the epoch it fetches (10): at least one version before the last
    assert len(versions) >= 2, versions
    for version in versions:
        transformers.AutoModelForCausalLM.from_pretrained(version)
        card = (version / "README.md").read_text()
        root = json.loads((version / "swarm.json").read_text())["ledger_root"]
        if not (version / "ledger" / "head.json").exists():  # published before the first epoch was credited
            assert root is None, version  # (claims get 12 s to arrive)
            continue
        report = verify_ledger(swarm.folder / "ledger", version)
        assert report.ok and report.trusted_tree_size is not None, (version, report.problem)
        head = json.loads((version / "ledger" / "head.json").read_text())
        assert root == head["root_hash"] and root in card, version


def _small_shared_memory_prefix(size: str) -> tuple[str, ...] | None:
    """A command prefix that runs a process with its own /dev/shm of `size` (a private mount namespace), or None
    where this machine does not allow it (not root, no unshare)."""
    import shutil
    import subprocess

    script = f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "$0" "$@"'
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run([*prefix, "df", "--output=size", "/dev/shm"], capture_output=True, text=True)
    return prefix if probe.returncode == 0 else None


@pytest.mark.slow  # real peers for 15-30 s: the opt-in job (.ci/run) runs it
@pytest.mark.timeout(180)
def test_a_volunteer_whose_shared_memory_is_too_small_is_told_how_to_fix_it(swarm_factory, recipe_writer, tmp_path):
    prefix = _small_shared_memory_prefix("1m")  # Docker's default is 64m; this model needs ~4 MB
    if prefix is None:
        pytest.skip("needs a private mount namespace (root and unshare) to give a process a small /dev/shm")
    swarm = swarm_factory()
    swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-shm", max_epochs=3))
    volunteer = swarm.join("cramped", prefix=prefix)
    assert volunteer.wait(timeout_s=150) == 1, volunteer.output[-3000:]
    output = volunteer.output
    assert "/dev/shm has 1 MB free, and this peer needs about" in output, output[-3000:]
    assert "--shm-size=1g" in output and "Traceback" not in output, output[-3000:]


@pytest.mark.slow  # real peers for 15-30 s: the opt-in job (.ci/run) runs it
@pytest.mark.timeout(240)
def test_a_volunteer_whose_processes_all_get_sigterm_leaves_within_seconds(swarm_factory, recipe_writer, tmp_path):
    """systemd's default stop (KillMode=control-group) sends SIGTERM to hivemind's child processes too. They died
    at once while the volunteer began to finish its epoch, and it waited on them forever."""
    swarm = swarm_factory()
    swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-group-term", max_epochs=200))
    volunteer = swarm.join("service")
    volunteer.wait_for(r"epoch \d+ \(", timeout_s=150)
    processes = process_tree(volunteer.popen.pid)
    volunteer.signal_tree(signal.SIGTERM)
    assert volunteer.wait(timeout_s=30) == 0, volunteer.output[-3000:]
    assert "hivemind's processes stopped with this one" in volunteer.output, volunteer.output[-3000:]
    assert "Traceback" not in volunteer.output, volunteer.output[-3000:]
    assert swarm.stats("service")["samples"] > 0
    time.sleep(2.0)  # the children the signal spared die with their parent (swarm.processes)
    assert [pid for pid in processes if is_running(pid)] == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.isdigit() and text in command:
            found.append(f"{entry}: {command}")
    return found


@pytest.mark.slow  # about a minute of real training: the opt-in job (.ci/run) runs it
@pytest.mark.timeout(300)
def test_ctrl_c_typed_in_a_terminal_stops_a_volunteer_and_the_coordinator_as_it_stops_them_alone(
        swarm_factory, recipe_writer, tmp_path):
    """A terminal sends Ctrl-C to the whole foreground job, hivemind's processes and their p2p daemons included.
    The coordinator's daemon died of it: its final version could not be fetched from the peer still training."""
    swarm = swarm_factory()
    coordinator = swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-terminal", max_epochs=1000),
                               terminal=True)
    # Ctrl-C as hivemind starts its averagers (right after the "Model:" line) was dropped: the peer trained on
    hasty = swarm.join("hasty", terminal=True)
    hasty.wait_for(r"Model: ", timeout_s=180)
    hasty.press_ctrl_c()
    assert hasty.wait(timeout_s=60) == 130, hasty.output[-3000:]
    # hivemind starts in well under a second here: the Ctrl-C may land as the swarm's state loads, also start-up
    assert re.search(r"Stopping \(SIGINT\) (during start-up|before training began)", hasty.output), hasty.output[-3000:]
    assert "Traceback" not in hasty.output and "First samples" not in hasty.output, hasty.output[-3000:]
    time.sleep(2.0)  # its hivemind processes and p2p daemons (named by its identity folder) are gone too
    assert _processes_mentioning(str(swarm.folder / "hasty")) == []

    leaver = swarm.join("leaver", terminal=True)
    stayer = swarm.join("stayer")
    leaver.wait_for(r"averaged rounds [1-9]", timeout_s=180)
    coordinator.wait_for(r"Published version epoch", timeout_s=120)

    leaver.press_ctrl_c()
    assert leaver.wait(timeout_s=90) == 0, leaver.output[-3000:]
    assert "Stopping: finishing the current epoch" in leaver.output, leaver.output[-3000:]
    assert "hivemind's processes stopped" not in leaver.output, leaver.output[-3000:]
    assert re.search(r"Left the swarm after \d+ samples", leaver.output), leaver.output[-3000:]

    coordinator.press_ctrl_c()
    assert coordinator.wait(timeout_s=120) == 0, coordinator.output[-3000:]
    stopping = coordinator.output.split("Stopping (SIGINT)")[-1]
    # the final version: fetched from the peer that trains on (it may be the version just published)
    assert re.search(FINAL_VERSION_SAVED, stopping), coordinator.output[-3000:]
    assert "Failed to download state" not in stopping and "No peer sent its state" not in stopping, stopping[-3000:]
    assert "Traceback" not in coordinator.output + leaver.output
    assert stayer.popen.poll() is None, "the other volunteer trains on"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_volunteer_on_another_machine_trains_on_its_own_copy_of_the_organisers_data_files(
        swarm_factory, recipe_writer, tmp_path):
    """A recipe on the organiser's own files is published with the organiser's paths: a volunteer elsewhere had no
    way to point at its copy of them."""
    import shutil

    import yaml
    from swarm.data import stdlib_files

    organiser = tmp_path / "organiser"
    for name, path in stdlib_files(60):
        (organiser / "corpus" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, organiser / "corpus" / name)
    path = recipe_writer(organiser / "recipe.yaml", "e2e-files", max_epochs=1000)
    recipe = yaml.safe_load(path.read_text())
    recipe["data"] = dict(source="files", files=["corpus/**/*.py"], seq_len=64, val_fraction=0.1, val_samples=32)
    path.write_text(yaml.safe_dump(recipe))
    swarm = swarm_factory()
    coordinator = swarm.launch(path)
    coordinator.wait_for(r"The data are files in (.*) \(\*\*/\*\.py\)", timeout_s=30)
    assert f"The data are files in {organiser / 'corpus'} (**/*.py)" in coordinator.output

    _a_volunteer_elsewhere_trains_only_with_its_copy(
        swarm, organiser / "corpus", tmp_path / "volunteer" / "my-copy", "--data-dir",
        refusal=[f"the organiser's folder {organiser / 'corpus'}, which this machine does not have",
                 "--data-dir DIR (DIR must hold **/*.py)"],
        data=r"Data: 60 text files.*matches the swarm")


def _a_volunteer_elsewhere_trains_only_with_its_copy(swarm, original, copy, flag: str, refusal: list[str],
                                                     data: str = r"Data: .*matches the swarm") -> None:
    """`original` moves away, as on another machine where the organiser's paths do not exist: a volunteer without
    `flag` is refused, naming the folder and the flag (exit 2); one given `flag <a copy>` trains."""
    import shutil

    shutil.copytree(original, copy)
    original.rename(original.parent / "elsewhere")
    lost = swarm.join("lost")
    assert lost.wait(timeout_s=120) == 2, lost.output[-3000:]
    assert all(part in lost.output for part in refusal) and "Traceback" not in lost.output, lost.output[-3000:]

    volunteer = swarm.join("with-copy", flag, str(copy))
    volunteer.wait_for(data, timeout_s=120)
    volunteer.wait_for(r"epoch \d+ \(", timeout_s=120)
    volunteer.interrupt()
    assert volunteer.wait(timeout_s=90) == 0, volunteer.output[-3000:]
    assert swarm.stats("with-copy")["samples"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_volunteer_on_another_machine_starts_from_its_own_copy_of_the_organisers_model_folder(
        swarm_factory, recipe_writer, tmp_path):
    """A run that fine-tunes the organiser's local model (its tokenizer in the same folder) is published with the
    organiser's path: elsewhere, transformers failed on it with a traceback."""
    import yaml
    from swarm.model import build_model
    from swarm.recipe import ModelConfig
    from swarm.tokenizer import ByteTokenizer

    organiser = tmp_path / "organiser"
    organiser.mkdir()
    path = recipe_writer(organiser / "recipe.yaml", "e2e-local-model", max_epochs=1000)
    recipe = yaml.safe_load(path.read_text())
    tokenizer = ByteTokenizer()
    build_model(ModelConfig(architecture="gpt2", config=recipe["model"]["config"]), tokenizer.vocab_size,
                tokenizer.eos_id, tokenizer.pad_id).save_pretrained(organiser / "base")
    tokenizer.save_pretrained(organiser / "base")
    recipe["model"] = {"pretrained": "base"}
    recipe["tokenizer"] = {"kind": "pretrained", "name": "base"}
    path.write_text(yaml.safe_dump(recipe))
    swarm = swarm_factory()
    coordinator = swarm.launch(path)
    coordinator.wait_for(r"The model starts from the folder .*--model-dir", timeout_s=60)
    assert "--tokenizer-dir" not in coordinator.output  # the tokenizer is in the model folder

    _a_volunteer_elsewhere_trains_only_with_its_copy(
        swarm, organiser / "base", tmp_path / "volunteer" / "my-copy", "--model-dir",
        refusal=[f"the model folder {organiser / 'base'} of the organiser's machine, which this machine does not "
                 "have", "--model-dir DIR"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_volunteer_at_the_runs_end_says_its_coordinator_is_stopped_and_waits_for_a_relaunch(
        swarm_factory, recipe_writer, tmp_path):
    swarm = swarm_factory()
    coordinator = swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-stopped", max_epochs=60))
    volunteer = swarm.join("last")
    coordinator.wait_for(r"Published version epoch", timeout_s=180)
    coordinator.interrupt()
    assert coordinator.wait(timeout_s=60) == 0, coordinator.output[-3000:]
    volunteer.wait_for(r"Waiting for the coordinator to save the final version", timeout_s=120)
    volunteer.wait_for(r"The coordinator is stopped: this peer keeps serving its state for \d+ s more", timeout_s=20)
    volunteer.interrupt()
    assert volunteer.wait(timeout_s=60) == 0, volunteer.output[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_typed_in_the_demos_terminal_ends_the_run_with_every_epoch_credited_and_a_final_version(tmp_path):
    """The demo's swarm is the whole run, so Ctrl-C ends it as a limit would. It used to stop the coordinator first
    (SIGINT), which credits only epochs whose claims had 12 s to arrive: a demo stopped early had an empty ledger,
    and the volunteers' last epochs were never credited."""
    output = tmp_path / "demo"
    demo = CliProcess(["demo", "--output", str(output), "--peers", "1", "--epochs", "500"], tmp_path / "demo.log",
                      terminal=True)
    try:
        demo.wait_for(r"\[coordinator\] .*swarm epoch [1-9]", timeout_s=240)
        processes = process_tree(demo.popen.pid)
        demo.press_ctrl_c()
        assert demo.wait(timeout_s=120) == 130, demo.output[-3000:]
    finally:
        demo.stop()
    assert "Ending the run: the volunteers finish the epoch in progress" in demo.output, demo.output[-3000:]
    coordinator_log = (output / "logs" / "coordinator.log").read_text()
    end_epoch = int(re.search(r"Run ended: the end the organiser set at epoch (\d+)", coordinator_log).group(1))
    summary = json.loads((output / "summary.json").read_text())
    # a volunteer learns of the end from the announcement, every few seconds: with epochs of two seconds it can finish
    # one more, and the run ends where the volunteers stopped
    final = summary["final_checkpoint_epoch"]
    assert end_epoch <= final <= end_epoch + 1, (end_epoch, final)
    assert re.search(rf"Published version epoch {final} ", coordinator_log), coordinator_log[-3000:]
    peer_log = (output / "logs" / "peer-0.log").read_text()
    assert f"Stopping: the run was ended by its organiser at epoch {end_epoch}" in peer_log, peer_log[-3000:]
    assert "The coordinator saved the final version" in peer_log and "Left the swarm after" in peer_log
    # every epoch the volunteer trained is in the ledger, which verifies
    entries = [json.loads(line) for line in (output / "ledger" / "entries.jsonl").read_text().splitlines()]
    credited = {entry["epoch"] for entry in entries}  # and the samples it began of the next, before it stopped
    assert set(range(final)) <= credited <= set(range(final + 1)), entries
    assert (summary["status"], summary["epochs"]) == ("finished", final)
    assert re.search(rf"1 peer\(s\) trained {final} epochs", demo.output), demo.output[-3000:]
    assert f"Stopped. What the swarm trained is in {output}" in demo.output
    assert "Traceback" not in demo.output + coordinator_log
    time.sleep(2.0)
    assert [pid for pid in processes if is_running(pid)] == []
    run_state = json.loads((output / "coordinator" / "run.json").read_text())
    assert (run_state["ended_at_epoch"], run_state["end_set_at_epoch"]) == (final, end_epoch), run_state

    # launched again, the run is over: nothing is trained, and the organiser is told how to train on
    again = CliProcess(["launch", str(output / "recipe.yaml"), "--host", "127.0.0.1", "--port", "0",
                        "--state-dir", str(output / "coordinator"), "--checkpoint-dir", str(output / "checkpoints"),
                        "--ledger-dir", str(output / "ledger"), "--dashboard-port", "-1"], tmp_path / "again.log")
    try:
        assert again.wait(timeout_s=120) == 0, again.output[-3000:]
    finally:
        again.stop()
    assert f"already reached the end the organiser set at epoch {end_epoch} before this launch" in again.output
    assert "delete ended_at_epoch from" in again.output


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_ctrl_c_leaves_others_training_and_a_late_volunteer_starts_from_the_swarm_state(swarm_factory, recipe_writer, tmp_path):
    swarm = swarm_factory()
    # epochs enough for the late volunteer to train: alone, the stayer runs ~3 epochs a second on 2 cores
    recipe = recipe_writer(tmp_path / "recipe.yaml", "e2e-churn", max_epochs=90)
    coordinator = swarm.launch(recipe)
    stayer = swarm.join("stayer")
    leaver = swarm.join("leaver")
    leaver.wait_for(r"averaged rounds [1-9]", timeout_s=180)

    leaver.interrupt()  # Ctrl-C: finish the epoch in progress, then leave cleanly
    assert leaver.wait(timeout_s=90) == 0, leaver.output[-3000:]
    assert "Stopping: finishing the current epoch" in leaver.output
    assert stayer.popen.poll() is None, "the other volunteer must keep training"
    # the stayer now trains alone, and knows it: the leaver withdrew its progress row, so the stayer does not count
    # it among the live peers (its last metrics row is still fresh) and does not "reconnect" to find it
    # (at the start, before the two saw each other, it may have reconnected: that is what the check is for)
    at_leave, output_at_leave = swarm.stats("stayer"), len(stayer.output)
    _wait_until(lambda: swarm.stats("stayer")["solo_rounds"] >= at_leave["solo_rounds"] + 4, 60, "four solo rounds")
    assert "Training alone" not in stayer.output[output_at_leave:], stayer.output[-3000:]
    assert swarm.stats("stayer")["reconnects"] == at_leave["reconnects"]

    epoch_before = int(stayer.wait_for(r"epoch (\d+) \(", timeout_s=30).group(1))
    late = swarm.join("late")
    loaded = late.wait_for(r"Loaded the swarm's state at epoch (\d+)", timeout_s=180)
    assert int(loaded.group(1)) >= max(1, epoch_before - 1), late.output[-3000:]

    assert coordinator.wait(timeout_s=400) == 0, coordinator.output[-3000:]
    assert stayer.wait(timeout_s=120) == 0
    assert late.wait(timeout_s=120) == 0
    assert swarm.stats("late")["loaded_state_epoch"] >= 1
    assert swarm.stats("late")["samples"] > 0, "the late volunteer trained from the swarm's state"
    assert swarm.summary()["final_val_loss"] < swarm.summary()["initial_val_loss"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_volunteer_at_its_max_runtime_finishes_its_epoch_so_its_partner_averages_with_it(swarm_factory,
                                                                                            recipe_writer, tmp_path):
    """--max-runtime left at once, mid-epoch: the partner's next round lost half its data, and the leaver was credited
    for samples that never reached the model."""
    swarm = swarm_factory()
    coordinator = swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-max-runtime", max_epochs=1000))
    stayer = swarm.join("stayer")
    timed = swarm.join("timed", "--max-runtime", "40")
    timed.wait_for(r"averaged rounds [1-9]", timeout_s=180)
    assert timed.wait(timeout_s=150) == 0, timed.output[-3000:]
    output = timed.output
    limit, finishing = output.find("Stopping: this volunteer's --max-runtime (40 s) is used up"), output.find(
        "Stopping: finishing the current epoch")
    assert 0 <= limit < finishing, output[-3000:]
    stopped_at = int(re.findall(r"epoch (\d+) \(", output[:limit])[-1])
    assert swarm.stats("timed")["epoch"] > stopped_at, output[-3000:]  # it finished the epoch in progress
    # no round lost the leaver's data from the moment it reached its limit (a partial round earlier, while the two
    # first found each other on 2 loaded cores, is another matter: seen once, 20 s before the limit)
    limit_at = _clock_s(next(line for line in output.splitlines() if "--max-runtime (40 s) is used up" in line))
    partial = [line for line in stayer.output.splitlines() if "of the data arrived in time" in line
               and (_clock_s(line) - limit_at) % 86400 < 43200]
    assert not partial, (partial, stayer.output[-3000:])
    assert stayer.popen.poll() is None and coordinator.popen.poll() is None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_volunteer_that_joins_as_the_run_ends_leaves_without_waiting_for_a_state_it_cannot_get(swarm_factory,
                                                                                                 recipe_writer,
                                                                                                 tmp_path):
    """A newcomer tester's volunteer joined a fast run whose one peer could not serve it the state: it retried the
    download every 2 s (each an ERROR line from hivemind) after the run had reached its limit, for up to
    load_state_timeout_s, then waited to serve a state it had never trained. Here the peer that finished the run is
    frozen (SIGSTOP) while the coordinator waits for its final state."""
    swarm = swarm_factory()
    swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-late-end", max_epochs=25))
    donor = swarm.join("donor")
    donor.wait_for(r"Stopping: the run reached limits.max_epochs \(25\)", timeout_s=240)
    frozen = process_tree(donor.popen.pid)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        late = swarm.join("late")
        assert late.wait(timeout_s=90) == 0, late.output[-3000:]
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert "the run reached limits.max_epochs (25) before this peer joined; nothing to train" in late.output, \
        late.output[-3000:]
    assert "Loading the current state" not in late.output and "Waiting for the coordinator" not in late.output
    assert "Traceback" not in late.output and swarm.stats("late")["samples"] == 0


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_a_demo_sent_sigterm_or_sighup_stops_its_swarm_instead_of_orphaning_it(tmp_path, signum):
    """`kill`, `timeout` or a closed terminal killed the demo at once: its coordinator and volunteers (each in its own
    process group) trained on as orphans until --max-duration, their logs lost (found by a newcomer tester)."""
    output = tmp_path / "demo"
    demo = CliProcess(["demo", "--output", str(output), "--peers", "1", "--epochs", "500"], tmp_path / "demo.log")
    try:
        demo.wait_for(r"\[coordinator\] .*swarm epoch [1-9]", timeout_s=240)
        processes = process_tree(demo.popen.pid)
        assert len(processes) > 3, processes  # the demo, the coordinator, the volunteer, their hivemind processes
        demo.popen.send_signal(signum)
        assert demo.wait(timeout_s=150) == 130, demo.output[-3000:]
    finally:
        demo.stop()
    assert f"{signal.Signals(signum).name}: stopping the demo as Ctrl-C would" in demo.output, demo.output[-3000:]
    assert f"Stopped. What the swarm trained is in {output}" in demo.output and "Traceback" not in demo.output
    time.sleep(2.0)
    assert [pid for pid in processes if is_running(pid)] == []
    assert json.loads((output / "summary.json").read_text())["status"] == "finished"


def _clock_s(line: str) -> int:
    """Seconds since midnight of a log line's HH:MM:SS stamp (volunteers log it first on each line)."""
    hours, minutes, seconds = re.search(r"(\d\d):(\d\d):(\d\d)", line).groups()
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds)


def _ledger_epochs(folder) -> dict[int, set[str]]:

    epochs: dict[int, set[str]] = {}
    path = folder / "ledger" / "entries.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        epochs.setdefault(entry["epoch"], set()).add(entry["name"])
    return epochs


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_dashboard_stops_counting_a_killed_peer_as_soon_as_its_peers_table_does(swarm_factory, recipe_writer,
                                                                                      tmp_path):
    """A peer killed with SIGKILL kept its progress record for a minute: /api/status and swarm_alive_peers said 2
    peers and added its rate to the swarm's for ~60 s, while /api/peers marked it dead after ~20 s."""
    import urllib.request

    from swarm.processes import kill_session

    def api(path: str) -> dict:
        with urllib.request.urlopen(dashboard + path, timeout=10) as response:
            return json.loads(response.read())

    swarm = swarm_factory()
    coordinator = swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-killed", max_epochs=10_000))
    dashboard = coordinator.wait_for(r"Dashboard: (http://\S+/) ", timeout_s=180).group(1)
    stayer, killed = swarm.join("stayer"), swarm.join("killed")
    _wait_until(lambda: api("api/status")["alive_peers"] == 2 and sum(peer["alive"] for peer in api("api/peers")) == 2,
                180, "both peers alive")
    kill_session(killed.popen.pid)
    killed_at = time.monotonic()
    _wait_until(lambda: api("api/status")["alive_peers"] == 1, 40, "one peer alive")
    counted_for_s = time.monotonic() - killed_at
    alive = [peer["name"] for peer in api("api/peers") if peer["alive"]]
    assert counted_for_s < 35 and alive == ["stayer"], (counted_for_s, alive)
    assert stayer.popen.poll() is None
    # a volunteer that leaves cleanly withdraws its progress record at once: the peers table (and swarm_peer_alive)
    # marked it alive for 20-30 s more, while alive_peers had dropped it
    stayer.popen.send_signal(signal.SIGINT)
    _wait_until(lambda: api("api/status")["alive_peers"] == 0, 120, "no peer alive")
    assert [peer["name"] for peer in api("api/peers") if peer["alive"]] == []


def _wait_until(condition, timeout_s: float, what: str):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_coordinator_killed_mid_run_restarts_its_ledger_and_credits_the_epochs_it_missed(
        swarm_factory, recipe_writer, tmp_path):
    import signal

    from swarm.ledger import verify_ledger

    swarm = swarm_factory()
    recipe = recipe_writer(tmp_path / "recipe.yaml", "e2e-outage", max_epochs=36)
    coordinator = swarm.launch(recipe)
    swarm.join("ann")
    swarm.join("ben")
    _wait_until(lambda: len(_ledger_epochs(swarm.folder)) >= 3, 240, "three credited epochs")

    coordinator.popen.send_signal(signal.SIGKILL)
    coordinator.wait(timeout_s=30)
    credited_before = max(_ledger_epochs(swarm.folder))
    # training goes on without the coordinator: the peers' epochs keep advancing
    _wait_until(lambda: swarm.stats("ann")["epoch"] >= credited_before + 8, 240, "training during the outage")
    outage_end_epoch = swarm.stats("ann")["epoch"]

    restarted = swarm.launch(recipe, port=swarm.port)
    restarted.wait_for(r"Resuming run 'e2e-outage'", timeout_s=60)
    # the dashboard's curves go on from before the outage (they were lost at every restart)
    url = restarted.wait_for(r"Dashboard at (http://\S+/) ", timeout_s=60).group(1)
    with urllib.request.urlopen(url + "api/epochs", timeout=10) as response:
        epochs = json.loads(response.read())
    assert epochs and min(row["epoch"] for row in epochs) < credited_before, epochs[:5]
    assert restarted.wait(timeout_s=400) == 0, restarted.output[-3000:]

    report = verify_ledger(swarm.folder / "ledger")
    assert report.ok, report.problem
    credited = _ledger_epochs(swarm.folder)
    missed = range(credited_before + 1, outage_end_epoch)
    # every epoch trained while the coordinator was down is credited to the peers after it returns
    assert all(credited.get(epoch) for epoch in missed), (sorted(credited), list(missed))
    assert set().union(*(credited[epoch] for epoch in missed)) == {"ann", "ben"}


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_a_volunteer_joining_an_empty_swarm_starts_from_the_latest_published_version(
        swarm_factory, recipe_writer, tmp_path):
    swarm = swarm_factory()
    recipe = recipe_writer(tmp_path / "recipe.yaml", "e2e-resume", max_epochs=100_000)
    settings = yaml.safe_load(recipe.read_text())
    settings["checkpoint"]["every_epochs"] = 100_000  # no version but the one the leaving peer hands over
    recipe.write_text(yaml.safe_dump(settings))
    coordinator = swarm.launch(recipe)
    first = swarm.join("first")
    _wait_until(lambda: max(map(int, re.findall(r"epoch (\d+) \(", first.output)), default=0) >= 5, 180, "epoch 5")
    first.interrupt()
    assert first.wait(timeout_s=150) == 0, first.output[-3000:]
    # the last peer training hands its state over as it leaves: before, every epoch since the newest version was
    # lost to the next volunteer (credited, but not in the model it started from)
    assert "No other peer is training: waiting up to 60 s for the coordinator" in first.output, first.output[-3000:]
    handed = re.search(r"The coordinator saved this peer's state as the version of epoch (\d+)", first.output)
    assert handed and int(handed.group(1)) == swarm.stats("first")["epoch"] >= 5, first.output[-3000:]
    assert "The last peer training is leaving" in coordinator.output, coordinator.output[-3000:]
    published = int(handed.group(1))

    newcomer = swarm.join("newcomer")
    started = newcomer.wait_for(r"starting from the published version of epoch (\d+)", timeout_s=180)
    assert int(started.group(1)) == published
    # it trains on from there: its epochs continue the published one instead of restarting at 0
    later = newcomer.wait_for(r"epoch (\d+) \(\d+/256 samples\)", timeout_s=120)
    assert int(later.group(1)) >= published


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_volunteers_with_delayed_updates_average_in_the_background_and_the_loss_goes_down(
        swarm_factory, recipe_writer, tmp_path):
    import yaml

    swarm = swarm_factory()
    path = recipe_writer(tmp_path / "recipe.yaml", "e2e-delayed", max_epochs=12)
    recipe = yaml.safe_load(path.read_text())
    # epochs longer than a round, which is where delaying the update pays
    recipe["collaboration"].update(delay_updates=True, target_batch_size=512)
    path.write_text(yaml.safe_dump(recipe))
    coordinator = swarm.launch(path)
    volunteers = {name: swarm.join(name) for name in ("alice", "bob")}

    assert coordinator.wait(timeout_s=420) == 0, coordinator.output[-3000:]
    for name, process in volunteers.items():
        assert process.wait(timeout_s=120) == 0, process.output[-3000:]
        stats = swarm.stats(name)
        assert stats["averaged_rounds"] >= 3, stats
        assert stats["non_finite_losses"] == 0, stats
    summary = swarm.summary()
    assert summary["epochs"] >= 12 and summary["averaged_rounds"] >= 3, summary
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.3, summary
    assert summary["granted_samples"] >= 12 * 512, summary
