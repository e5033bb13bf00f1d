"""What a volunteer's terminal shows of hivemind's logs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli_process import REPO

# A process sends its DHT node a command and exits before the node reads it, as an averager leaving with its peer does.
# The DHT process is stopped meanwhile, so the order does not depend on the machine's speed.
SEND_AND_EXIT = """
import multiprocessing, os, signal, sys, time
from swarm.logs import setup_logging
setup_logging(verbose=sys.argv[1] == "verbose")
from hivemind.utils import get_dht_time
from swarm.network import create_dht
dht = create_dht([], host="127.0.0.1")
os.kill(dht.pid, signal.SIGSTOP)

def send_and_exit():
    dht.store("left-behind", "a value", get_dht_time() + 60, return_future=True)
    os._exit(0)

sender = multiprocessing.get_context("fork").Process(target=send_and_exit)
sender.start()
sender.join()
os.kill(dht.pid, signal.SIGCONT)
time.sleep(1.0)
assert dht.store("after", "works", get_dht_time() + 60) and dht.get("after").value == "works"
dht.shutdown()
print("the node served on")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("verbose", [False, True])
def test_a_command_whose_sender_exited_before_the_dht_read_it_shows_no_traceback_unless_verbose(verbose):
    run = subprocess.run([sys.executable, "-c", SEND_AND_EXIT, "verbose" if verbose else "normal"], cwd=REPO,
                         capture_output=True, text=True, timeout=100)
    assert run.returncode == 0 and "the node served on" in run.stdout, run.stderr[-3000:]
    if verbose:  # the failure is real, and shown in full to whoever asks for debug logs
        assert "resource_sharer" in run.stderr and "Traceback" in run.stderr, run.stderr[-3000:]
    else:
        assert "Traceback" not in run.stderr and "ERROR" not in run.stderr, run.stderr[-3000:]


def _in_a_forked_process(script: str, verbose: bool) -> subprocess.CompletedProcess:
    """Run `script`'s `hivemind_process()` in a process forked after the logging setup, as hivemind's DHT and averager
    processes are; "exit code N" on stdout is the forked process's."""
    forked = ('\nprocess = multiprocessing.get_context("fork").Process(target=hivemind_process)\n'
              'process.start()\nprocess.join()\nprint("exit code", process.exitcode)\n')
    return subprocess.run([sys.executable, "-c", script + forked, "verbose" if verbose else "normal"], cwd=REPO,
                          capture_output=True, text=True, timeout=100)


# What hivemind leaves behind in a healthy run, made for real in a process forked after the logging setup, as hivemind's
# DHT and averager processes are; next to it, an asyncio error and a scheduler warning of someone else's.
HIVEMIND_NOISE_IN_A_FORKED_PROCESS = """
import asyncio, gc, multiprocessing, os, sys, tempfile, types
from swarm.logs import setup_logging
setup_logging(verbose=sys.argv[1] == "verbose")
import torch
from hivemind.p2p import P2P
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.utils.asyncio import switch_to_uvloop

def misordered_scheduler():
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

async def make_noise(socket_dir):
    p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    async def serve(stream_info, reader, writer):
        writer.close()
    await p2p.add_binary_stream_handler("swarm.test", serve)  # from now on the daemon hands this process streams
    while not os.path.exists(p2p._client_listen_maddr["unix"]):
        await asyncio.sleep(0.05)
    for _ in range(3):  # as the p2p daemon does: open a stream to this process, close it before sending its header
        reader, writer = await asyncio.open_unix_connection(p2p._client_listen_maddr["unix"])
        writer.close()

    finished = asyncio.sleep(0)
    await finished
    async def handler_with_a_bug(reader, writer):
        raise ValueError("a stream handler's own bug")
    async def handler_of_a_destroyed_task(reader, writer):
        await finished  # the error reported for hivemind's handler tasks after a state download
    for handler in (handler_with_a_bug, handler_of_a_destroyed_task):
        path = os.path.join(socket_dir, handler.__name__)
        server = await asyncio.start_unix_server(handler, path=path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.close()
        await asyncio.sleep(0.2)
        server.close()

    asyncio.get_running_loop().call_soon(lambda: 1 / 0)  # an asyncio error of another kind
    asyncio.ensure_future(asyncio.wait_for(asyncio.Event().wait(), 60))  # left pending when the loop stops
    await asyncio.sleep(0.5)
    await p2p.shutdown()

def hivemind_process():
    with tempfile.TemporaryDirectory() as socket_dir:
        loop = switch_to_uvloop()
        loop.run_until_complete(make_noise(socket_dir))
        loop.close()
    del loop
    gc.collect()
    # as hivemind's state averager does after loading state at epoch 3
    TrainingStateAverager._update_scheduler(types.SimpleNamespace(scheduler=misordered_scheduler(), local_epoch=3))
    misordered_scheduler().step()  # anyone else's misordered step
    print("the process exited normally", file=sys.stderr)

"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("verbose", [False, True])
def test_hivemind_stream_closes_pending_tasks_and_state_load_warning_hidden_unless_verbose_even_after_fork(verbose):
    run = _in_a_forked_process(HIVEMIND_NOISE_IN_A_FORKED_PROCESS, verbose)
    assert run.returncode == 0 and "exit code 0" in run.stdout, run.stderr[-3000:]
    assert "the process exited normally" in run.stderr, run.stderr[-3000:]
    # other asyncio errors, and the same warning from anyone but hivemind's state averager, are shown either way
    assert "ValueError: a stream handler's own bug" in run.stderr, run.stderr[-3000:]
    assert "ZeroDivisionError" in run.stderr and "Exception in callback" in run.stderr, run.stderr[-3000:]
    warned = run.stderr.count("UserWarning: Detected call of `lr_scheduler.step()` before `optimizer.step()`")
    noise = ["IncompleteReadError", "read_pbmsg_safe", "Task was destroyed but it is pending!",
             "cannot reuse already awaited coroutine"]
    if verbose:  # shown in full to whoever asks for debug logs
        assert all(line in run.stderr for line in noise) and warned == 2, run.stderr[-3000:]
        assert run.stderr.count("Unhandled exception in client_connected_cb") == 5, run.stderr[-3000:]
    else:
        assert not [line for line in noise if line in run.stderr] and warned == 1, run.stderr[-3000:]
        assert run.stderr.count("Unhandled exception in client_connected_cb") == 1, run.stderr[-3000:]


# What a volunteer on a slow or flaky link logged, through hivemind's own loggers and calls, in a process forked after
# the logging setup as hivemind's averagers are: a round cut short, a state download that failed, a partial round,
# a reply nobody awaited from a peer that hung up; next to them, a hivemind error of another kind.
HIVEMIND_ON_A_FLAKY_LINK = """
import asyncio, multiprocessing, sys
from swarm.logs import setup_logging
setup_logging(verbose=sys.argv[1] == "verbose")
from hivemind.averaging.matchmaking import MatchmakingException
from hivemind.p2p import P2P
from hivemind.proto import dht_pb2
from hivemind.utils.logging import get_logger

averager, partition = get_logger("hivemind.averaging.averager"), get_logger("hivemind.averaging.partition")

async def a_reply_from_a_peer_that_hung_up():
    reader = asyncio.StreamReader()
    reader.set_exception(ConnectionResetError(104, "Connection reset by peer"))
    reply = asyncio.get_running_loop().create_future()
    try:
        await P2P.receive_protobuf(dht_pb2.PingResponse, reader)
    except ConnectionResetError as error:
        reply.set_exception(error)
    del reply  # never awaited: asyncio reports it when it is collected

def hivemind_process():
    try:  # as hivemind's averager reports a round whose all-reduce was cancelled
        try:
            raise asyncio.CancelledError()
        except asyncio.CancelledError as error:
            raise MatchmakingException(f"Unable to run All-Reduce: {error}")
    except MatchmakingException as error:
        averager.exception(error)
    try:
        raise TimeoutError()
    except TimeoutError as error:
        averager.exception(f"Failed to download state from QmPeer - {repr(error)}")
    partition.warning("Reducer: received 50.0% of input tensors")
    asyncio.run(a_reply_from_a_peer_that_hung_up())
    try:
        raise ValueError("an averager bug")
    except ValueError as error:
        averager.exception(error)
    print("the process exited normally", file=sys.stderr)

"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("verbose", [False, True])
def test_a_flaky_links_round_and_download_failures_are_one_line_each_unless_verbose(verbose):
    run = _in_a_forked_process(HIVEMIND_ON_A_FLAKY_LINK, verbose)
    assert "exit code 0" in run.stdout and "the process exited normally" in run.stderr, run.stderr[-3000:]
    log = run.stderr
    assert "an averager bug" in log and "ValueError: an averager bug" in log, log  # another error keeps its traceback
    if verbose:
        assert "Reducer: received 50.0%" in log and "Future exception was never retrieved" in log, log
        assert log.count("Traceback") >= 4, log
        return
    assert "Unable to run All-Reduce: CancelledError" in log, log
    assert "Failed to download state from QmPeer - TimeoutError()" in log, log
    assert log.count("Traceback") == 1, log  # the averager bug's
    assert "Reducer: received" not in log and "never retrieved" not in log and "ConnectionResetError" not in log, log
