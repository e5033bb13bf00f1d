"""`swarm launch` with bad paths or ports: exit code 2, one message naming the flag or file and the fix, no traceback,
and the files already there left exactly as they were."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from coordinator_process import RunFolder, launch, tree_digest
from cli_process import write_test_recipe

ROOT = Path(__file__).resolve().parents[2]


def _launch_and_expect_usage_error(run: RunFolder, recipe, *extra: str, dashboard_port: int | None = None) -> str:
    before = tree_digest(run.root.parent)
    coordinator = launch(run, recipe, *extra, dashboard_port=dashboard_port)
    try:
        code = coordinator.wait(timeout_s=120)
    finally:
        coordinator.stop()
    output = coordinator.output
    assert code == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-3000:]
    after = tree_digest(run.root.parent)
    assert {name: digest for name, digest in after.items() if "/logs/" not in name} == {
        name: digest for name, digest in before.items() if "/logs/" not in name}
    return errors[0]


@pytest.mark.parametrize("flag", ["state", "checkpoints", "ledger"])
def test_a_folder_flag_given_a_file_is_refused_with_its_name(tmp_path, flag):
    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "bad-folder")
    path = getattr(run, flag)
    path.write_text("an organiser's notes, not a folder\n")
    error = _launch_and_expect_usage_error(run, recipe)
    name = {"state": "--state-dir", "checkpoints": "--checkpoint-dir", "ledger": "--ledger-dir"}[flag]
    assert error == f"error: {name} {path} is a file, not a folder: give a folder (it is created if missing)"


@pytest.mark.parametrize("flags, named", [
    (["--dashboard-port", "70000"], "--dashboard-port 70000 is not a TCP port"),
    (["--state-dir", "{afile}"], "--state-dir {afile} is a file, not a folder"),
    (["--summary-file", "{afile}/summary.json"], "the folder of --summary-file {afile}/summary.json {afile} is a file"),
])
def test_a_bad_flag_is_named_before_torch_and_hivemind_are_imported(tmp_path, flags, named):
    # they take 4-6 s to import: a mistyped flag was named only after them
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "early-flags")
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "swarm.cli", "launch", str(recipe),
         *[flag.format(afile=afile) for flag in flags]],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120)
    assert completed.returncode == 2 and f"error: {named.format(afile=afile)}" in completed.stderr, \
        completed.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in completed.stderr.splitlines()
                if line.startswith("import time:")}
    assert "typer" in imported, "no import times: the check below would prove nothing"
    assert not imported & {"torch", "hivemind", "transformers"}, sorted(imported & {"torch", "hivemind"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile", "recipe.yaml"]


def test_a_folder_below_a_file_is_refused_with_the_file_named(tmp_path):
    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "bad-parent")
    (tmp_path / "notes").write_text("a file\n")
    error = _launch_and_expect_usage_error(run, recipe, "--final-model-dir", str(tmp_path / "notes" / "final"))
    assert error == (f"error: --final-model-dir {tmp_path / 'notes' / 'final'} cannot be created: {tmp_path / 'notes'} "
                     "is a file, not a folder; give another path")


@pytest.mark.parametrize("content, problem", [
    (b"\xff\xfe\x00{not utf-8", "not UTF-8 JSON"),
    (b"[1]", "expected an object with a started_at time and a peer_addresses list"),
    (b'{"started_at": "yesterday", "peer_addresses": []}', "expected an object with a started_at time"),
])
def test_a_run_state_file_the_coordinator_did_not_write_is_refused_and_kept(tmp_path, content, problem):
    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "bad-run-state")
    run.state.mkdir(parents=True)
    (run.state / "run.json").write_bytes(content)
    error = _launch_and_expect_usage_error(run, recipe)
    assert error.startswith(f"error: {run.state / 'run.json'} is not the run state this coordinator writes (")
    assert problem in error
    assert error.endswith("restore it from a backup, or delete it to start the run's clock anew (the identity, "
                          "ledger and published versions stay as they are)")
    assert sorted(path.name for path in run.state.iterdir()) == ["run.json"]  # no identity, no key: nothing started


def test_a_dashboard_port_in_use_is_refused_with_the_address_and_the_fix(tmp_path):
    run = RunFolder(tmp_path / "run")
    recipe = write_test_recipe(tmp_path / "recipe.yaml", "port-taken")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = _launch_and_expect_usage_error(run, recipe, dashboard_port=port)
    assert error == (f"error: the dashboard cannot listen on 127.0.0.1:{port} (Address already in use): choose another "
                     "--dashboard-port, 0 for any free one, or -1 for no dashboard")
    assert not run.state.exists()  # refused before anything was written


@pytest.mark.parametrize("port", [70000, 65536])
def test_a_dashboard_port_out_of_range_is_refused(tmp_path, port):
    run = RunFolder(tmp_path / "run")
    error = _launch_and_expect_usage_error(run, write_test_recipe(tmp_path / "recipe.yaml", "port-range"),
                                           dashboard_port=port)
    assert error == (f"error: --dashboard-port {port} is not a TCP port: use 1-65535, 0 for any free port, or -1 for "
                     "no dashboard")


def test_launch_names_what_a_volunteer_must_bring_beyond_swarm_join(tmp_path):
    """Copies of the organiser's own data, model and tokenizer folders, each with its flag; nothing for blockwise8,
    whose bitsandbytes every volunteer installs with swarm."""
    from coordinator.coordinator import volunteer_notes
    from swarm.recipe import Recipe

    assert volunteer_notes(Recipe.model_validate({"run": {"id": "plain"}})) == []  # the stdlib and a built model
    (tmp_path / "corpus").mkdir()
    local = Recipe.model_validate({
        "run": {"id": "local"}, "model": {"pretrained": str(tmp_path / "base")},
        "tokenizer": {"kind": "pretrained", "name": str(tmp_path / "tok")},
        "data": {"source": "files", "files": [str(tmp_path / "corpus" / "*.txt")]},
        "collaboration": {"compression": "blockwise8"},
    })
    notes = volunteer_notes(local)
    assert notes[0] == (f"The data are files in {tmp_path / 'corpus'} (*.txt): a volunteer on another machine needs a "
                        "copy of that folder, passed with --data-dir <the copy>.")
    assert f"The model starts from the folder {tmp_path / 'base'}" in notes[1] and "--model-dir" in notes[1]
    assert f"The tokenizer is the folder {tmp_path / 'tok'}" in notes[2] and "--tokenizer-dir" in notes[2]
    assert len(notes) == 3
    in_the_model = local.tokenizer.model_copy(update={"name": str(tmp_path / "base")})
    same_folder = local.model_copy(update={"tokenizer": in_the_model})
    assert not any("--tokenizer-dir" in note for note in volunteer_notes(same_folder))


def test_a_loopback_announce_host_is_named_in_the_banner_with_the_fix(tmp_path):
    """With `--announce-host localhost` the banner said to pass --announce-host, which the organiser had done."""
    run = RunFolder(tmp_path / "run")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    coordinator = launch(run, write_test_recipe(tmp_path / "recipe.yaml", "loopback-announce"), "--announce-host",
                         "localhost", port=port)
    try:
        coordinator.wait_for(r"swarm join --initial-peers /ip4/127\.0\.0\.1/", timeout_s=120)
        coordinator.wait_for(r"--announce-host localhost is a loopback address, which other machines cannot dial: "
                             r"give this machine's public IP address or host name", timeout_s=10)
        # and how to end the run early, with this coordinator's own pid
        coordinator.wait_for(rf"run `kill -USR1 {coordinator.popen.pid}`", timeout_s=10)
    finally:
        coordinator.stop()
    assert "Only a loopback address is visible" not in coordinator.output


# ---- a Hub repo without a usable token: refused before the data are prepared -----------------------------------

HUB_REPO_ID = "swarm-test/launch-token"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """The fake Hub, found through HF_ENDPOINT, and no token anywhere: HF_TOKEN unset, HF_HOME an empty folder."""
    from fake_hub import FakeHub

    with FakeHub(tmp_path / "fake-hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # the fake speaks LFS
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        (tmp_path / "hf-home").mkdir()
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        yield hub


def _hub_recipe(tmp_path, run_id: str):
    import yaml

    path = write_test_recipe(tmp_path / "recipe.yaml", run_id)
    recipe = yaml.safe_load(path.read_text())
    recipe["checkpoint"]["hub_repo_id"] = HUB_REPO_ID
    path.write_text(yaml.safe_dump(recipe))
    return path


def _refused_before_the_data(run: RunFolder, recipe) -> tuple[str, str]:
    """Launch, expect one usage error, and check that no data were prepared first: (the error, the whole output)."""
    error = _launch_and_expect_usage_error(run, recipe)
    output = (run.root / "logs" / "coordinator-0.log").read_text()
    assert "validation tokens" not in output and "initial validation loss" not in output, output[-3000:]
    return error, output


def test_a_hub_repo_without_any_token_is_refused_before_the_data_and_without_a_request(tmp_path, fake_hub):
    """The missing token was found only when the coordinator first talked to the Hub, after the data were
    tokenised (minutes for a large dataset)."""
    run = RunFolder(tmp_path / "run")
    error, _ = _refused_before_the_data(run, _hub_recipe(tmp_path, "hub-no-token"))
    assert error == (f"error: checkpoint.hub_repo_id is {HUB_REPO_ID} but there is no token for the Hub: set HF_TOKEN "
                     f"to a write token for {HUB_REPO_ID} (create one at {fake_hub.url}/settings/tokens), or log in "
                     "with `hf auth login` (`huggingface-cli login` before huggingface_hub 0.34); or remove "
                     "checkpoint.hub_repo_id from the recipe to publish locally only")
    assert fake_hub.requests == []


def test_a_saved_login_token_the_hub_refuses_stops_the_launch_before_the_data(tmp_path, fake_hub):
    """The token `hf auth login` saved is used when HF_TOKEN is unset; the Hub's 401 is said before the data too."""
    (tmp_path / "hf-home" / "token").write_text("hf_not_a_real_token\n")
    run = RunFolder(tmp_path / "run")
    error, output = _refused_before_the_data(run, _hub_recipe(tmp_path, "hub-refused-saved"))
    assert error.startswith(f"error: cannot create the Hub repo {HUB_REPO_ID} at {fake_hub.url}: the token was refused "
                            "(401)"), error
    assert "`hf auth login`" in error and "hf_not_a_real_token" not in output
    assert fake_hub.requests and HUB_REPO_ID not in fake_hub.repos


# ---- a port held by another swarm command ----------------------------------------------------------------------

HOLD_A_PORT = """import socket, sys, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
time.sleep(120)
"""


def test_a_port_held_by_a_swarm_coordinator_names_it_its_run_and_how_to_stop_it(tmp_path):
    """It said "by another program" for the organiser's own coordinator, launched earlier in another terminal. The
    holder here is a real process that `swarm launch` would be, as /proc shows it (its command line and folder);
    a real coordinator: test_a_second_launch_on_the_port_of_a_running_coordinator_names_the_first."""
    import subprocess
    import sys

    (tmp_path / "first").mkdir()
    write_test_recipe(tmp_path / "first" / "recipe.yaml", "held-port")
    stand_in = tmp_path / "bin" / "swarm"
    stand_in.parent.mkdir()
    stand_in.write_text(HOLD_A_PORT)
    holder = subprocess.Popen([sys.executable, str(stand_in), "launch", "--host", "127.0.0.1", "recipe.yaml"],
                              cwd=tmp_path / "first", stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        run = RunFolder(tmp_path / "run")
        error = _launch_and_expect_usage_error(run, write_test_recipe(tmp_path / "recipe.yaml", "second"),
                                               "--port", str(port))
    finally:
        holder.kill()
        holder.wait()
    assert error == (f"error: --port {port} is already in use on this machine by a swarm coordinator (run 'held-port', "
                     f"pid {holder.pid}): stop it first (Ctrl-C in its terminal, or `kill {holder.pid}`), or pick "
                     "another port, or --port 0 for any free port")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_second_launch_on_the_port_of_a_running_coordinator_names_the_first(tmp_path):
    first_run = RunFolder(tmp_path / "first")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = launch(first_run, write_test_recipe(tmp_path / "first.yaml", "first-on-port"), port=port,
                   dashboard_port=None)
    try:
        first.wait_for(r"swarm join --initial-peers", timeout_s=180)
        second = launch(RunFolder(tmp_path / "second"), write_test_recipe(tmp_path / "second.yaml", "second"),
                        port=port, dashboard_port=None)
        try:
            assert second.wait(timeout_s=120) == 2, second.output[-3000:]
        finally:
            second.stop()
    finally:
        first.stop()
    assert (f"error: --port {port} is already in use on this machine by a swarm coordinator (run 'first-on-port', "
            f"pid {first.popen.pid}): stop it first (Ctrl-C in its terminal, or `kill {first.popen.pid}`), or pick "
            "another port, or --port 0 for any free port") in second.output, second.output[-3000:]
