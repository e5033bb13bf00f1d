"""Log lines are the volunteer's interface: one line per state change, with units and the next action."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
import warnings
from typing import Annotated

import typer

# every command takes it (`swarm recipe validate FILE --verbose`), and so does `swarm` itself (`swarm -v COMMAND`)
VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", "-v", envvar="SWARM_VERBOSE", help="Debug logs (hivemind's included) and tracebacks."),
]


def setup_logging(verbose: bool = False, libraries: bool = True) -> None:
    """swarm at INFO (DEBUG with --verbose); hivemind's own chatter at WARNING unless verbose.

    `libraries=False` leaves hivemind and transformers alone (and unimported: they take seconds to load), for
    commands that do not use them.
    """
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "DEBUG" if verbose else "WARNING")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Writing model shards" bars flood the logs
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger("swarm")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    for name in ("peer", "coordinator"):
        logging.getLogger(name).handlers[:] = [handler]
        logging.getLogger(name).setLevel(root.level)
    if not libraries:
        return
    from hivemind.utils.logging import get_logger

    get_logger("hivemind").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:  # installed before hivemind forks its DHT and averager processes, which inherit them
        for logger, noise_filter in ((get_logger("hivemind.dht.dht"), _CommandsFromExitedProcesses),
                                     (logging.getLogger("asyncio"), _HarmlessAsyncioReports),
                                     *((get_logger(name), _HivemindInOneLine) for name in _HIVEMIND_IN_ONE_LINE)):
            if not any(isinstance(f, noise_filter) for f in logger.filters):
                logger.addFilter(noise_filter())
        # hivemind's state averager steps the scheduler up to the loaded epoch before any optimizer step, on every
        # state load: the schedule is right, and torch warns all the same. Anyone else's misordered step still warns.
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`",
                                UserWarning, r"hivemind\.")
        # hivemind's uint8 codec uses torch's quantized tensors, which torch now calls deprecated, mid-progress on
        # every volunteer's console; nothing a volunteer can act on (`--verbose` shows it)
        warnings.filterwarnings("ignore", r"torch\.quantize_per_tensor", UserWarning, r"hivemind\.")
    # transformers warns about every config default it fills in; none of it is actionable for a volunteer
    import transformers

    transformers.logging.set_verbosity_error()


_HIVEMIND_IN_ONE_LINE = ("hivemind.averaging.averager", "hivemind.averaging.partition", "hivemind.dht.dht")


class _HivemindInOneLine(logging.Filter):
    """hivemind's reports of what swarm reports itself, in its own words, or that need no traceback.

    On a slow or flaky link a healthy volunteer's log got hivemind's tracebacks for a round that failed ("Unable to
    run All-Reduce:" with an empty reason, then 30 lines) and for a state download from a busy peer, plus "Reducer:
    received 50.0% of input tensors" next to swarm's own warning about the same partial round. They read as crashes.
    A failed round or download stays one line (with its error), partial rounds and hivemind's slow shutdowns of its
    own processes at exit are left to swarm's messages; `--verbose` shows everything.
    """

    _LEFT_OUT = ("Reducer: received", "Averaging: received", "DHT did not shut down within the grace period",
                 "Averager did not shut down within the grace period")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self._LEFT_OUT):
            return False
        if record.exc_info and record.exc_info[1] is not None and (
                message.startswith(("Unable to run All-Reduce", "Failed to download state from"))
                or isinstance(record.exc_info[1], (asyncio.CancelledError, ConnectionError, TimeoutError))):
            error = record.exc_info[1]
            cause = error.__cause__ or error.__context__
            reason = str(error) if str(error).rstrip(": ") != "Unable to run All-Reduce" else (
                f"Unable to run All-Reduce: {type(cause).__name__ if cause is not None else type(error).__name__}")
            record.msg, record.args = (message if not message.endswith(": ") else reason), None
            record.exc_info, record.exc_text = None, None
        return True


class _CommandsFromExitedProcesses(logging.Filter):
    """Leave out hivemind's error, with its traceback, for a command its DHT process could not read because the
    process that sent it had exited.

    A command carries the sender's reply pipe, which the DHT process fetches from the sender when it reads the command.
    An averager process that leaves with its peer sends a last DHT store and exits at once: the fetch fails with
    "Connection reset by peer" and a volunteer's Ctrl-C ended with a 20-line traceback. Nobody waits for that reply.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not isinstance(record.exc_info[1], (ConnectionError, FileNotFoundError, EOFError)):
            return True
        frames = traceback.walk_tb(record.exc_info[2])
        return not any(frame.f_code.co_filename.endswith("resource_sharer.py") for frame, _ in frames)


class _HarmlessAsyncioReports(logging.Filter):
    """Leave out asyncio's reports of what hivemind's p2p daemon client leaves behind in a healthy run; any other
    asyncio error is shown.

    Every process with a hivemind p2p node (the DHT and averager processes too) serves the streams that its p2p daemon
    opens, one local connection each. When the daemon opens one and closes it before sending the stream's header,
    reading the header fails with IncompleteReadError (or a reset) and asyncio logs a 13-line traceback under
    "Unhandled exception in client_connected_cb". A volunteer logged 4 to 8 of them each time a peer or the
    coordinator downloaded its state. "RuntimeError: cannot reuse already awaited coroutine" is reported the same way
    for such a handler, right after its task was reported destroyed while pending (seen on a state load). "Task was
    destroyed but it is pending!" is a task still waiting when its event loop is dropped, as hivemind leaves some at
    almost every exit; it carries no error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Task was destroyed but it is pending!"):
            return False
        if message.startswith(("Future exception was never retrieved", "Task exception was never retrieved")) and (
                record.exc_info):
            # a p2p stream whose peer hung up (a member left mid-round, a slow link reset): nobody awaited its reply
            error, codes = record.exc_info[1], [frame.f_code for frame, _ in traceback.walk_tb(record.exc_info[2])]
            in_p2p = any(os.path.join("hivemind", "p2p") in code.co_filename for code in codes)
            return not (isinstance(error, (asyncio.IncompleteReadError, ConnectionError)) and in_p2p)
        if not message.startswith("Unhandled exception in client_connected_cb") or not record.exc_info:
            return True
        error = record.exc_info[1]
        if isinstance(error, RuntimeError) and str(error) == "cannot reuse already awaited coroutine":
            return False
        if not isinstance(error, (asyncio.IncompleteReadError, ConnectionError)):
            return True
        codes = [frame.f_code for frame, _ in traceback.walk_tb(record.exc_info[2])]
        in_the_header = (len(codes) >= 2 and codes[0].co_name == "_handler" and codes[1].co_name == "read_pbmsg_safe"
                         and codes[0].co_filename.endswith(os.path.join("p2p_daemon_bindings", "control.py")))
        return not in_the_header
