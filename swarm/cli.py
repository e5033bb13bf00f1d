"""The `swarm` command line. Entry points are thin: parse, build, run, close; the logic lives in the packages."""

from __future__ import annotations

import os
import signal
import sys
import threading


def _exit_interrupted(signum: int | None = None, frame: object = None) -> None:
    print("interrupted", file=sys.stderr, flush=True)
    if signum is not None:
        # from the handler while modules import: nothing is written yet, and SystemExit raised where the signal
        # landed can be swallowed (inside a weakref callback of the import lock it printed "Exception ignored ...
        # Traceback" and went on), so leave at once
        os._exit(130)
    sys.exit(130)


def _quiet_ctrl_c() -> bool:
    """Until commands run, Ctrl-C exits with 130 at once: Python's KeyboardInterrupt would show the traceback of
    whatever was being imported (typer, pydantic, ... take a few tenths of a second). True if installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False  # ignored (a background job) or already handled: leave it so
    signal.signal(signal.SIGINT, _exit_interrupted)
    return True


def _usual_ctrl_c(installed: bool) -> None:
    if installed:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_IMPORTING = _quiet_ctrl_c()

import time  # noqa: E402  (after the Ctrl-C handler, like everything below)
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List, Optional  # noqa: E402

import typer  # noqa: E402

from swarm.logs import VerboseOption  # noqa: E402

app = typer.Typer(
    name="swarm",
    help="Volunteer distributed training: pool idle GPUs to train open models together, with verifiable credit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _options(ctx: typer.Context, verbose: VerboseOption = False) -> None:
    if not verbose:
        return
    # `swarm --verbose COMMAND` is `swarm COMMAND --verbose`: every command's --verbose reads this variable
    before = os.environ.get("SWARM_VERBOSE")
    os.environ["SWARM_VERBOSE"] = "1"

    def restore() -> None:
        if before is None:
            os.environ.pop("SWARM_VERBOSE", None)
        else:
            os.environ["SWARM_VERBOSE"] = before

    ctx.call_on_close(restore)


@app.command()
def launch(
    recipe: Path = typer.Argument(..., help="The run's recipe (YAML)."),
    host: str = typer.Option("0.0.0.0", envvar="SWARM_HOST", help="Interface to listen on (an IP address)."),
    port: int = typer.Option(31337, envvar="SWARM_PORT", help="TCP port volunteers connect to (0: any free port)."),
    announce_host: Optional[str] = typer.Option(
        None, envvar="SWARM_ANNOUNCE_HOST",
        help="Public IP address or host name to advertise when behind NAT/port forwarding (needs a fixed --port; a "
             "name is resolved at start)."),
    initial_peers: List[str] = typer.Option([], "--initial-peers", envvar="SWARM_INITIAL_PEERS",
                                            help="Join an existing run's DHT as an extra coordinator/bootstrap node."),
    state_dir: Optional[Path] = typer.Option(
        None, envvar="SWARM_STATE_DIR",
        help="Coordinator state (identity, status.json). Default runs/<run id>/coordinator."),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="Override the recipe's checkpoint.dir."),
    summary_file: Optional[Path] = typer.Option(None, help="Write the run summary (JSON) here at the end."),
    final_model_dir: Optional[Path] = typer.Option(None, help="Also write the final model here."),
    ledger_dir: Optional[Path] = typer.Option(None, help="Ledger folder (default: next to the checkpoint folder)."),
    dashboard_host: str = typer.Option("127.0.0.1", envvar="SWARM_DASHBOARD_HOST",
                                       help="Interface of the dashboard and /metrics (0.0.0.0 to publish it)."),
    dashboard_port: int = typer.Option(8080, envvar="SWARM_DASHBOARD_PORT",
                                       help="Dashboard port (0: any free port, -1: no dashboard)."),
    verbose: VerboseOption = False,
):
    """Start the coordinator of a run: the first DHT node, recipe publisher, monitor and checkpointer."""
    from coordinator.settings import CoordinatorSettings, check_launch_flags
    from swarm.logs import setup_logging

    setup_logging(verbose, libraries=False)  # hivemind's and transformers' logs once they are imported, below
    settings = CoordinatorSettings(host=host, port=port, announce_host=announce_host,
                                   state_dir=str(state_dir) if state_dir else None,
                                   checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
                                   summary_file=str(summary_file) if summary_file else None,
                                   final_model_dir=str(final_model_dir) if final_model_dir else None,
                                   ledger_dir=str(ledger_dir) if ledger_dir else None,
                                   dashboard_host=dashboard_host,
                                   dashboard_port=None if dashboard_port < 0 else dashboard_port)
    check_launch_flags(settings)  # before torch, transformers and hivemind are imported (seconds)
    from swarm.network import check_listen_port, listen_addresses, parse_initial_peers
    from swarm.recipe import load_recipe

    setup_logging(verbose)
    listen_addresses(host, port, announce_host)  # a bad flag fails now, not after the model and data are built
    check_listen_port(host, port)  # a taken --port too (checked again when hivemind starts)
    settings.initial_peers = parse_initial_peers(initial_peers)
    loaded = load_recipe(recipe)
    from coordinator.coordinator import Coordinator

    Coordinator(loaded, settings).run()


@app.command()
def join(
    initial_peers: List[str] = typer.Option(..., "--initial-peers", envvar="SWARM_INITIAL_PEERS",
                                            help="Coordinator address printed by `swarm launch` (repeatable)."),
    run_id: Optional[str] = typer.Option(None, envvar="SWARM_RUN_ID", help="Which run, if the swarm serves several."),
    name: Optional[str] = typer.Option(None, envvar="SWARM_NAME", help="Display name on the leaderboard (saved)."),
    team: Optional[str] = typer.Option(None, envvar="SWARM_TEAM", help="Team on the leaderboard (saved)."),
    identity: Optional[Path] = typer.Option(None, envvar="SWARM_IDENTITY",
                                            help="Identity folder (keys, name). Default ~/.swarm/identity."),
    device: str = typer.Option("auto", envvar="SWARM_DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    threads: Optional[int] = typer.Option(None, envvar="SWARM_THREADS", help="Use at most this many CPU threads."),
    micro_batch_size: Optional[int] = typer.Option(
        None, envvar="SWARM_MICRO_BATCH_SIZE", help="Samples per forward/backward (default: picked for the hardware)."),
    max_runtime: Optional[float] = typer.Option(
        None, envvar="SWARM_MAX_RUNTIME",
        help="Leave after this many seconds (finishing the epoch in progress); waits outside --hours count."),
    hours: Optional[str] = typer.Option(
        None, envvar="SWARM_HOURS",
        help="Train only in these windows of local time, e.g. 22:00-07:00 or 12:00-13:00,22:00-07:00; outside them "
             "wait, using nothing."),
    host: str = typer.Option("0.0.0.0", envvar="SWARM_HOST", help="Interface to listen on."),
    port: int = typer.Option(0, envvar="SWARM_PORT", help="TCP port for other peers (0: any free port)."),
    announce_host: Optional[str] = typer.Option(
        None, envvar="SWARM_ANNOUNCE_HOST",
        help="Public IP address or host name to advertise (needs a fixed --port; a name is resolved at start)."),
    client_mode: bool = typer.Option(False, "--client-mode", envvar="SWARM_CLIENT_MODE",
                                     help="Behind NAT/firewall: only connect out (others cannot reach this peer)."),
    cache_dir: Optional[Path] = typer.Option(None, envvar="SWARM_CACHE_DIR", help="Tokenised data cache."),
    data_dir: Optional[Path] = typer.Option(
        None, envvar="SWARM_DATA_DIR",
        help="This machine's copy of the run's data folder, for runs on the organiser's own files (the coordinator "
             "prints what it must hold)."),
    model_dir: Optional[Path] = typer.Option(
        None, envvar="SWARM_MODEL_DIR",
        help="This machine's copy of the organiser's model folder, for runs that start from a local model."),
    tokenizer_dir: Optional[Path] = typer.Option(
        None, envvar="SWARM_TOKENIZER_DIR",
        help="This machine's copy of the organiser's tokenizer folder, when it is not in the model folder."),
    stats_file: Optional[Path] = typer.Option(None, envvar="SWARM_STATS_FILE",
                                              help="Write this peer's stats (JSON) here."),
    display: str = typer.Option("auto", envvar="SWARM_DISPLAY", help="auto, rich, log or none."),
    compile: str = typer.Option("auto", "--compile", envvar="SWARM_COMPILE",
                                help="torch.compile the model: auto (on CUDA only), on or off."),
    from_checkpoint: Optional[str] = typer.Option(
        None, envvar="SWARM_FROM_CHECKPOINT",
        help="If nobody is training, start from this published version (folder or hub-repo@revision); "
             "default: the run's latest."),
    verbose: VerboseOption = False,
):
    """Volunteer this machine: fetch the run's recipe from the swarm, load the latest state, train with peers."""
    from peer.settings import VolunteerSettings, check_local_settings
    from swarm.logs import setup_logging

    setup_logging(verbose, libraries=False)  # hivemind's and transformers' logs once they are imported, below
    settings = VolunteerSettings(
        initial_peers=initial_peers, run_id=run_id, identity_dir=str(identity) if identity else None, name=name,
        team=team, host=host, port=port, announce_host=announce_host, client_mode=client_mode, device=device,
        threads=threads, micro_batch_size=micro_batch_size, max_runtime_s=max_runtime, hours=hours,
        cache_dir=str(cache_dir) if cache_dir else None, stats_file=str(stats_file) if stats_file else None,
        display=display, from_checkpoint=from_checkpoint, compile=compile,
        data_dir=str(data_dir) if data_dir else None, model_dir=str(model_dir) if model_dir else None,
        tokenizer_dir=str(tokenizer_dir) if tokenizer_dir else None)
    # bad flags fail now, before this peer joins the swarm; most before torch and hivemind are imported (seconds)
    check_local_settings(settings)

    def check_with_torch_and_hivemind() -> None:
        from swarm.hardware import resolve_device
        from swarm.network import listen_addresses

        setup_logging(verbose)
        listen_addresses(host, port, announce_host, client_mode=client_mode)
        resolve_device(device)

    hours = settings.training_hours
    try:  # outside --hours: sleep before importing torch and hivemind, which take memory the owner keeps meanwhile
        from peer.schedule import wait_for_training_hours

        if hours is not None and hours.stretch_at(time.time()) is None:
            _check_in_a_child(check_with_torch_and_hivemind)  # a bad --device is named now, not when the window opens
        if not wait_for_training_hours(hours, settings.max_runtime_s, settings.joined_at_s):
            return
    except KeyboardInterrupt:
        _exit_interrupted()
    check_with_torch_and_hivemind()
    from peer.volunteer import Volunteer, join_again

    volunteer = Volunteer(settings)
    volunteer.run()
    if volunteer.interrupted:
        _exit_interrupted()
    if volunteer.comes_back_at_s is not None:  # an --hours window ended: wait for the next one, then train again
        join_again(settings.joined_at_s)


def _check_in_a_child(check) -> None:
    """Run `check` in a forked child, so that what it imports (torch, hivemind: hundreds of MB) stays out of this
    process, which then waits for hours; a SwarmError there is this command's error (message, exit code)."""
    from swarm.errors import SwarmError

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            check()
        except SwarmError as error:
            print(f"error: {error}", file=sys.stderr)
            code = error.exit_code
        except KeyboardInterrupt:  # Ctrl-C reaches the whole job: the parent says so
            code = 130
        except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        sys.exit(code if code > 0 else 1)


@app.command()
def demo(
    peers: int = typer.Option(2, min=1, max=16, help="Local volunteer processes."),
    epochs: int = typer.Option(40, min=1, help="Swarm epochs (global steps) to train."),
    max_duration: float = typer.Option(540.0, min=10, help="Stop training after this many seconds even if the "
                                                           "epochs are not done (slow or busy machines)."),
    recipe: Path = typer.Option(Path(__file__).resolve().parent.parent / "recipes" / "tiny-stdlib.yaml",
                                show_default=False, help="Recipe to run (default: the embedded tiny-stdlib)."),
    output: Optional[Path] = typer.Option(None, help="Output folder, new or empty (default: demo-output/<time>)."),
    verbose: VerboseOption = False,
):
    """Run a whole swarm on this machine: a coordinator and N volunteers on loopback, then print the output folder."""
    from swarm.demo import check_output_folder, run_demo
    from swarm.logs import setup_logging

    if output is not None:
        check_output_folder(output)
    setup_logging(verbose)
    folder = run_demo(recipe_path=recipe, num_peers=peers, epochs=epochs, max_duration_s=max_duration, output=output,
                      verbose=verbose)
    print(folder)


def _register_groups() -> None:
    """Add `swarm recipe ...`, `swarm checkpoint ...` and `swarm ledger ...` (once, however often it is called)."""
    if any(group.name == "recipe" for group in app.registered_groups):
        return
    from swarm.checkpoint_cli import checkpoint_app
    from swarm.recipe_cli import recipe_app

    app.add_typer(recipe_app, name="recipe")
    app.add_typer(checkpoint_app, name="checkpoint")
    try:
        from swarm.ledger_cli import ledger_app
    except ImportError:  # pragma: no cover - the ledger module is optional during development
        return
    app.add_typer(ledger_app, name="ledger")


def main() -> None:
    """Console-script entry: user errors print one clear message and exit 1 or 2, never a traceback."""
    quiet = _quiet_ctrl_c()
    try:
        from swarm.errors import SwarmError
        from swarm.recipe import RecipeError

        _register_groups()
    finally:
        _usual_ctrl_c(quiet)
    verbose = ("--verbose" in sys.argv or "-v" in sys.argv
               or os.environ.get("SWARM_VERBOSE", "").lower() in ("1", "true", "yes", "on"))
    try:
        app()
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except SwarmError as error:
        if verbose:
            traceback.print_exc()
        else:
            print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        _exit_interrupted()


_usual_ctrl_c(_IMPORTING)

if __name__ == "__main__":
    main()
