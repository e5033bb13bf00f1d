"""`swarm checkpoint ...`: a run's published versions, after the coordinator has stopped.

`publish` uploads to the run's Hub repo the versions a coordinator could not (the Hub was away when it stopped: its
last line names them and this command). Errors are one line naming the flag or folder, exit 2 (1 for a repo that
holds another run), never a traceback.
"""

from __future__ import annotations

import re
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
    if repo is not None:
        check_repo_id(repo)
    from coordinator.hub import publish_versions

    report = publish_versions(checkpoint_dir, epochs=list(epoch) or None, repo_id=repo, ledger_dir=ledger_dir)
    uploaded = ", ".join(f"epoch-{number:06d}" for number in report.uploaded) or "nothing"
    typer.echo(f"Uploaded {uploaded} to {report.repo_id}"
               + (f"; {len(report.already_there)} version(s) were there already" if report.already_there else ""))


def check_repo_id(repo: str) -> None:
    """Refuse a --repo that is not ORG/NAME, by the check `checkpoint.hub_repo_id` has in a recipe, so that the two
    agree (a URL is refused by both; its ORG/NAME is named). Nothing is asked of the Hub."""
    from pydantic import ValidationError

    from swarm.errors import UsageError
    from swarm.recipe import CheckpointConfig

    try:
        CheckpointConfig(hub_repo_id=repo)
    except ValidationError:
        address = re.fullmatch(r"https?://(?:www\.)?huggingface\.co/([^/?#\s]+/[^/?#\s]+)/?", repo.strip())
        hint = f" (for that address: --repo {address.group(1)})" if address else ""
        raise UsageError(f"--repo {repo!r} is not a Hub repo id: give it as ORG/NAME, for example "
                         f"my-org/tiny-stdlib{hint}") from None
