"""The `swarm` command line as a user runs it: bad flags and files exit 1 or 2 with one clear line, never a traceback
or a hang; Ctrl-C is quiet; --verbose works everywhere; nothing already written is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm.cli import _register_groups, app
from swarm.errors import UsageError
from swarm.ledger import Ledger
from swarm.processes import kill_session

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "tiny-stdlib.yaml"
PEER = "/ip4/127.0.0.1/tcp/9/p2p/QmYgMpCT1p8dQ5dCJxfaQZutoNA9Dp2wZYhTQa3RFr6JMu"  # never dialled: the flags fail first


def swarm(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `swarm ARGUMENTS...` as its own process, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SWARM_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", "swarm.cli", *arguments], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_refused(completed: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    assert completed.returncode == code, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    for fragment in fragments:
        assert fragment in completed.stderr


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else b"", path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


# --- addresses ---------------------------------------------------------------------------------------------------


def test_launch_with_an_announce_host_that_does_not_resolve_exits_2_at_once(tmp_path):
    # it printed hivemind's StringParseError TypeError and then hung forever
    completed = swarm("launch", str(RECIPE), "--port", "18779", "--announce-host", "notanip.invalid",
                      "--state-dir", str(tmp_path / "state"), timeout=90)
    assert_refused(completed, "--announce-host 'notanip.invalid' does not resolve")
    assert not (tmp_path / "state").exists()


def test_join_with_an_announce_host_that_does_not_resolve_exits_2_at_once(tmp_path):
    completed = swarm("join", "--initial-peers", PEER, "--port", "18780", "--announce-host", "my.host.invalid",
                      "--identity", str(tmp_path / "id"), timeout=90)
    assert_refused(completed, "--announce-host 'my.host.invalid' does not resolve")


@pytest.mark.parametrize("port", ["-5", "70000"])
def test_launch_with_a_port_outside_0_to_65535_exits_2(port):
    assert_refused(swarm("launch", str(RECIPE), "--port", port), f"--port {port}: use a TCP port from 1 to 65535")


def test_announce_host_with_port_0_exits_2_saying_it_needs_a_fixed_port(tmp_path):
    completed = swarm("join", "--initial-peers", PEER, "--announce-host", "203.0.113.5",
                      "--identity", str(tmp_path / "id"))
    assert_refused(completed, "--announce-host 203.0.113.5 needs a fixed --port")


# --- devices -----------------------------------------------------------------------------------------------------


def test_join_with_a_gpu_this_machine_lacks_names_the_gpu_asked_for(tmp_path):
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = f"cuda:{max(5, visible)}"
    completed = swarm("join", "--initial-peers", PEER, "--device", missing, "--identity", str(tmp_path / "id"))
    if visible:
        assert_refused(completed, f"--device {missing}: torch sees {visible} CUDA GPU")
    else:
        assert_refused(completed, f"--device {missing}: no CUDA GPU is visible to torch")
    assert not (tmp_path / "id").exists(), "refused before anything was set up"


# --- identity ----------------------------------------------------------------------------------------------------


def test_join_with_a_damaged_profile_exits_2_naming_it_and_keeps_it(tmp_path):
    folder = tmp_path / "id"
    folder.mkdir()
    profile = folder / "profile.json"
    profile.write_bytes(b'{"name": "ada", "team": "x"')  # truncated: it was replaced by a new default name
    completed = swarm("join", "--initial-peers", PEER, "--identity", str(folder), "--name", "ada")
    assert_refused(completed, f"{profile} is not valid JSON", "move it away")
    assert profile.read_bytes() == b'{"name": "ada", "team": "x"'


# --- Ctrl-C ------------------------------------------------------------------------------------------------------


def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback():
    # The first few tenths of a second are imports; Ctrl-C there printed a KeyboardInterrupt traceback.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    interrupted = 0
    for delay_s in (0.01, 0.04, 0.09, 0.14):
        # as from a terminal: a suite run in the background (`pytest &`) has SIGINT ignored, and children inherit it
        process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "swarm.cli", "recipe", "validate",
                                    str(RECIPE)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        # the delays count from swarm.cli's import of `threading`, its last step before it takes Ctrl-C over: until
        # then any Python program dies of Ctrl-C with a traceback (the interpreter, `-m`), and on a busy machine that
        # start alone can take a tenth of a second
        for line in process.stderr:
            if line.rstrip().endswith("| threading"):
                break
        time.sleep(delay_s)
        process.send_signal(signal.SIGINT)
        stdout, rest = process.communicate(timeout=60)
        stderr = "".join(line for line in rest.splitlines(keepends=True) if not line.startswith("import time:"))
        assert "Traceback" not in stderr, (delay_s, stderr)
        if process.returncode == 0 or (process.returncode == -signal.SIGINT and stdout.startswith("ok: ")):
            assert stdout.startswith("ok: ")  # it was already done (or exiting: Python restores SIG_DFL at exit)
        else:
            # "interrupted" from swarm while it imports; typer says nothing once the command runs
            # 130 from swarm's handler; killed by the signal (-2) where it came as Python restored SIG_DFL at exit
            assert process.returncode in (130, -signal.SIGINT) and stderr in ("interrupted\n", ""), (delay_s, stderr)
            interrupted += 1
    assert interrupted, "no signal arrived while the command was starting: the test proves nothing"


# --- demo --------------------------------------------------------------------------------------------------------


def test_demo_refuses_an_output_folder_that_holds_an_earlier_run_and_leaves_it_untouched(tmp_path):
    earlier = tmp_path / "demo"
    (earlier / "checkpoints" / "epoch-000003").mkdir(parents=True)
    (earlier / "checkpoints" / "latest").write_text("epoch-000003\n")
    (earlier / "ledger").mkdir()
    (earlier / "ledger" / "entries.jsonl").write_text('{"epoch": 1}\n')
    (earlier / "summary.json").write_text('{"epochs": 3}\n')
    before = snapshot(earlier)
    process = subprocess.Popen(
        [sys.executable, "-m", "swarm.cli", "demo", "--output", str(earlier), "--epochs", "1", "--peers", "1"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started a whole swarm in there
        kill_session(process.pid)
        stdout, stderr = process.communicate()
    assert_refused(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
                   f"--output {earlier} is not empty (checkpoints, ledger, summary.json)", "new or empty folder")
    assert snapshot(earlier) == before


def test_demo_output_may_be_a_new_or_empty_folder_but_not_a_file(tmp_path):
    from swarm.demo import check_output_folder

    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")
    check_output_folder(tmp_path / "new")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UsageError, match="is a file: pass a new or empty folder"):
        check_output_folder(tmp_path / "a-file")


# --- --verbose ---------------------------------------------------------------------------------------------------


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under `group` (a click-style group, as typer builds it), by its words."""
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found += _commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


def test_every_command_and_swarm_itself_take_verbose():
    _register_groups()
    root = typer.main.get_command(app)
    commands = _commands(root)
    assert {path for path, _ in commands} >= {("launch",), ("join",), ("demo",), ("recipe", "validate"),
                                              ("recipe", "show"), ("recipe", "schema"), ("ledger", "verify"),
                                              ("ledger", "show"), ("ledger", "prove"), ("ledger", "checkpoint")}
    for path, command in [((), root), *commands]:
        options = {flag for parameter in command.params for flag in getattr(parameter, "opts", [])}
        assert {"--verbose", "-v"} <= options, f"`swarm {' '.join(path)}` lacks --verbose"


@pytest.fixture(scope="module")
def empty_ledger(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ledger") / "ledger"
    with Ledger.open(folder, Ed25519PrivateKey.generate(), run_id="verbose-test"):
        pass
    return folder


@pytest.mark.parametrize("arguments", [
    ("recipe", "validate", str(RECIPE), "--verbose"),
    ("--verbose", "recipe", "validate", str(RECIPE)),
    ("recipe", "show", str(RECIPE), "-v"),
    ("ledger", "verify", "{ledger}", "--verbose"),
    ("-v", "ledger", "show", "{ledger}"),
], ids=["recipe-validate", "top-level", "recipe-show", "ledger-verify", "top-level-ledger"])
def test_verbose_is_accepted_and_changes_nothing_else(arguments, empty_ledger):
    # these failed with "No such option: --verbose" although the README promises it for any command
    arguments = [argument.replace("{ledger}", str(empty_ledger)) for argument in arguments]
    quiet = swarm(*[argument for argument in arguments if argument not in ("--verbose", "-v")])
    verbose = swarm(*arguments)
    assert verbose.returncode == quiet.returncode == 0, verbose.stderr
    assert verbose.stdout == quiet.stdout


def test_verbose_shows_the_traceback_of_an_error_that_is_otherwise_one_line(tmp_path):
    missing = str(tmp_path / "absent")
    quiet, verbose, top_level = (swarm("ledger", "verify", missing), swarm("ledger", "verify", missing, "--verbose"),
                                 swarm("--verbose", "ledger", "verify", missing))
    assert_refused(quiet, f"error: no ledger at {missing}")
    for completed in (verbose, top_level):
        assert completed.returncode == 2
        assert "Traceback" in completed.stderr and f"error: no ledger at {missing}" in completed.stderr


@pytest.mark.parametrize("command", ["join", "launch", "demo", "ledger verify", "ledger show", "recipe validate"])
def test_help_on_an_80_column_terminal_cuts_no_flag_or_environment_variable_name(command):
    """At 80 columns `swarm join --help` showed `--micro-batch-s…` and `SWARM_INITIAL_PEE…`: the names to type were
    unreadable (a `--no-client-mode` column took the width)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    completed = subprocess.run([sys.executable, "-m", "swarm.cli", *command.split(), "--help"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert max(len(line) for line in completed.stdout.splitlines()) <= 80, completed.stdout
    assert "…" not in completed.stdout, completed.stdout


# --- swarm checkpoint publish --repo -----------------------------------------------------------------------------


@pytest.mark.parametrize("repo, hint", [
    ("a/b/c", ""), ("https://huggingface.co/my-org/tiny-stdlib", " (for that address: --repo my-org/tiny-stdlib)"),
])
def test_checkpoint_publish_refuses_a_repo_that_is_not_org_slash_name_at_once(tmp_path, repo, hint):
    """Such a --repo went on to the folder and the Hub, and failed there with the Hub's own words."""
    completed = swarm("checkpoint", "publish", "--checkpoint-dir", str(tmp_path / "absent"), "--all-missing",
                      "--repo", repo)
    assert_refused(completed)
    assert completed.stderr.strip() == (f"error: --repo {repo!r} is not a Hub repo id: give it as ORG/NAME, for "
                                        f"example my-org/tiny-stdlib{hint}")


def test_checkpoint_publish_takes_the_repo_ids_a_recipe_takes():
    """One check for both: a --repo is good where checkpoint.hub_repo_id is, and refused where it is refused."""
    from pydantic import ValidationError

    from swarm.checkpoint_cli import check_repo_id
    from swarm.recipe import CheckpointConfig

    for repo in ["my-org/tiny-stdlib", "Org_1/name.v2", "just-a-name", "a/b/c", "my org/tiny stdlib", "",
                 "https://huggingface.co/org/name", "https://huggingface.co/datasets/org/name"]:
        try:
            CheckpointConfig(hub_repo_id=repo)
            recipe_takes = True
        except ValidationError:
            recipe_takes = False
        try:
            check_repo_id(repo)
            cli_takes = True
        except UsageError as refused:
            cli_takes = False
            assert str(refused).startswith(f"--repo {repo!r} is not a Hub repo id: give it as ORG/NAME"), refused
        assert cli_takes == recipe_takes, repo
    with pytest.raises(UsageError, match=r"\(for that address: --repo org/name\)$"):
        check_repo_id("https://huggingface.co/org/name/")
    with pytest.raises(UsageError, match=r"my-org/tiny-stdlib$"):  # a dataset's address: no repo id to offer
        check_repo_id("https://huggingface.co/datasets/org/name")
