"""Log lines are the volunteer's interface: one line per state change, with units and the next action."""

from __future__ import annotations

import logging
import os
import sys
import traceback
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
    if not verbose:  # installed before hivemind forks its DHT process, which inherits it
        dht_logger = get_logger("hivemind.dht.dht")
        if not any(isinstance(f, _CommandsFromExitedProcesses) for f in dht_logger.filters):
            dht_logger.addFilter(_CommandsFromExitedProcesses())
    # transformers warns about every config default it fills in; none of it is actionable for a volunteer
    import transformers

    transformers.logging.set_verbosity_error()


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
