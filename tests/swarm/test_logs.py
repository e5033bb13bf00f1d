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
