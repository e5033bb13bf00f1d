"""`swarm checkpoint ...`: a run's published versions, after the coordinator has stopped.

`publish` uploads to the run's Hub repo the versions a coordinator could not (the Hub was away when it stopped: its
last line names them and this command). Errors are one line naming the flag or folder, exit 2 (1 for a repo that
holds another run), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from swarm.logs import VerboseOption, setup_logging

checkpoint_app = typer.Typer(help="A run's published versions: upload them to its Hub repo.", no_args_is_help=True)


@checkpoint_app.command("publish")
def publish(
    checkpoint_dir: Path = typer.Option(..., envvar="SWARM_CHECKPOINT_DIR",
                                        help="The run's checkpoint folder (checkpoint.dir in its recipe)."),
    epoch: List[int] = typer.Option([], "--epoch", min=0,
                                    help="Upload this version (repeatable), again if its tag exists."),
    all_missing: bool = typer.Option(False, "--all-missing", help="Upload every version whose tag the repo lacks."),
    repo: Optional[str] = typer.Option(None, envvar="SWARM_HUB_REPO",
                                       help="The Hub repo (default: checkpoint.hub_repo_id of the newest version)."),
    ledger_dir: Optional[Path] = typer.Option(None, help="The run's ledger folder, uploaded with each version "
                                              "(default: the `ledger` folder next to --checkpoint-dir)."),
    verbose: VerboseOption = False,
):
    """Upload a run's versions to its Hub repo (token from HF_TOKEN): those a stopped coordinator could not."""
    from swarm.errors import UsageError

    setup_logging(verbose)
    if bool(epoch) == all_missing:
        raise UsageError("give --epoch N (repeatable) or --all-missing: one of the two")
    from coordinator.hub import publish_versions

    report = publish_versions(checkpoint_dir, epochs=list(epoch) or None, repo_id=repo, ledger_dir=ledger_dir)
    uploaded = ", ".join(f"epoch-{number:06d}" for number in report.uploaded) or "nothing"
    typer.echo(f"Uploaded {uploaded} to {report.repo_id}"
               + (f"; {len(report.already_there)} version(s) were there already" if report.already_there else ""))
