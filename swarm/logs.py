"""Log lines are the volunteer's interface: one line per state change, with units and the next action."""

from __future__ import annotations

import logging
import os
import sys
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
    # transformers warns about every config default it fills in; none of it is actionable for a volunteer
    import transformers

    transformers.logging.set_verbosity_error()
