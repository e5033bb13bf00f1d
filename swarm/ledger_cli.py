"""`swarm ledger ...`: verify a credit ledger, show its leaderboard, prove an entry, save a checkpoint.

Every command takes the ledger folder or its http(s) URL. Exit codes: 0 all good, 1 the ledger (or proof)
does not verify, 2 unusable input (a missing folder, file or URL, a server that cuts a file short or answers with
a web page). The logic lives in `swarm.ledger`.

Names and teams are the volunteers' own words: what reaches the terminal shows each control character as its
escape (`\x1b`) and never as rich markup.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from swarm.errors import SwarmError
from swarm.logs import VerboseOption, setup_logging
from swarm.ledger import (
    LedgerTotals,
    audit_ledger,
    build_inclusion_proof,
    latest_checkpoint,
    stale_summaries,
    verify_inclusion_proof,
    visible_text,
)

ledger_app = typer.Typer(
    help="Check and read a swarm credit ledger (a folder, or the URL it is published at).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SourceArgument = Annotated[
    str, typer.Argument(metavar="PATH_OR_URL", help="Ledger folder, or its http(s) URL.", show_default=False)
]
PublicKeyOption = Annotated[
    str | None,
    typer.Option(
        "--public-key",
        envvar="SWARM_LEDGER_PUBLIC_KEY",
        help="Pin the coordinator's key: a PEM file or its sha256 fingerprint (64 hex digits).",
        show_default=False,
    ),
]


class GroupBy(StrEnum):
    peer = "peer"
    team = "team"


def _fail(message: str, exit_code: int) -> NoReturn:
    # a problem may quote a tampered file's run id or peer id: its escapes must not reach the terminal
    typer.echo("\n".join(f"error: {visible_text(line)}" if number == 0 else visible_text(line)
                         for number, line in enumerate(message.split("\n"))), err=True)
    raise typer.Exit(exit_code)


def _failed(error: SwarmError, verbose: bool) -> NoReturn:
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    _fail(str(error), error.exit_code)


def _start(verbose: bool) -> None:
    if verbose:
        setup_logging(verbose=True, libraries=False)


def _print_json(value: object) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    if not text.replace("\n", "").isprintable():
        # json escapes C0 controls only: a C1 control or a bidi override in a name still reached the terminal. Any
        # such character is inside a string, where its \uXXXX escape reads back as the same text.
        text = "".join(char if char.isprintable() or char == "\n" else json.dumps(char)[1:-1] for char in text)
    typer.echo(text)


@ledger_app.command()
def verify(
    source: Annotated[
        str | None,
        typer.Argument(metavar="[PATH_OR_URL]", help="Ledger folder, or its http(s) URL.", show_default=False),
    ] = None,
    trusted: Annotated[
        Path | None,
        typer.Option(help="A checkpoint saved earlier (`swarm ledger checkpoint`): prove the log extends it."),
    ] = None,
    public_key: PublicKeyOption = None,
    proof: Annotated[
        Path | None, typer.Option(help="Check only this inclusion proof (from `swarm ledger prove`).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Recompute every hash and check every signature; exit 0 only if the whole ledger holds.

    On failure, prints the first problem (the line, entry and checkpoint concerned) and exits 1.
    """
    _start(verbose)
    try:
        if proof is not None:
            report = verify_inclusion_proof(proof, source, pinned_key=public_key)
        elif source is None:
            _fail("give the ledger folder or URL to verify (or --proof FILE with --public-key PEM)", 2)
        else:
            audit = audit_ledger(source, trusted, pinned_key=public_key)
            report = audit.report
            stale = stale_summaries(source, audit.totals) if report.ok else []
    except SwarmError as error:
        _failed(error, verbose)
    if as_json:
        _print_json(report.model_dump(mode="json"))
    if not report.ok:
        _fail(f"does not verify: {report.problem}", 1)
    if not as_json:
        typer.echo(f"ok: {visible_text(report.summary())}")
    if proof is None and stale:
        verb = "differs" if len(stale) == 1 else "differ"
        typer.echo(f"note: {' and '.join(stale)} {verb} from the sums of the verified entries: these summaries are "
                   "not signed (the coordinator rewrites them within 5 s of each checkpoint), so read the totals "
                   "with `swarm ledger show`, which sums the verified entries", err=True)


@ledger_app.command()
def show(
    source: SourceArgument,
    by: Annotated[GroupBy, typer.Option(help="One row per volunteer or per team.")] = GroupBy.peer,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print rows as CSV (as totals.csv, teams.csv).")] = False,
    top: Annotated[int | None, typer.Option(min=1, help="Only the first N rows.", show_default=False)] = None,
    public_key: PublicKeyOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Leaderboard: claimed and granted samples, compute time and epochs, per volunteer or per team.

    If the ledger does not verify: exit code 1, the problem on stderr, and the table titled NOT VERIFIED.

    --json and --csv then print nothing, so a script that publishes their output never publishes unproven totals.

    --csv, like totals.csv, puts ' before a name starting with = + - @ (never a spreadsheet formula); --json is exact.
    """
    _start(verbose)
    if as_json and as_csv:
        _fail("choose one of --json and --csv", 2)
    try:
        audit = audit_ledger(source, pinned_key=public_key)
    except SwarmError as error:
        _failed(error, verbose)
    if not audit.report.ok and (as_json or as_csv):
        _fail(f"does not verify, so no totals are printed: {audit.report.problem}", 1)
    _print_totals(audit.totals, by, as_json, as_csv, top, verified=audit.report.ok)
    if not audit.report.ok:
        _fail(f"does not verify, so these totals are not proven: {audit.report.problem}", 1)


def _print_totals(totals: LedgerTotals, by: GroupBy, as_json: bool, as_csv: bool, top: int | None,
                  verified: bool) -> None:
    rows = [asdict(row) for row in (totals.peer_leaderboard() if by is GroupBy.peer else totals.team_leaderboard())]
    rows = rows[:top] if top else rows
    if as_json:
        _print_json(rows)
        return
    if as_csv:
        text = totals.peers_csv() if by is GroupBy.peer else totals.teams_csv()
        typer.echo("".join(text.splitlines(keepends=True)[: (top + 1) if top else None]), nl=False)
        return
    title = f"Credit per {'volunteer' if by is GroupBy.peer else 'team'}"
    if not verified:
        title = f"NOT VERIFIED: the ledger does not verify, so these totals are not proven\n{title}"
    table = Table(title=title, title_style="bold red" if not verified else None)
    table.add_column("#", justify="right")
    if by is GroupBy.peer:
        table.add_column("volunteer", overflow="fold")  # default names differ at their end: never cut them
        table.add_column("peer id", no_wrap=True)
        table.add_column("team")
    else:
        table.add_column("team")
        table.add_column("volunteers", justify="right")
    # a team's epochs are its volunteers' epochs added up (3 volunteers in 10 epochs: 30)
    for column in ("granted samples", "claimed samples", "compute (h)",
                   "epochs" if by is GroupBy.peer else "volunteer-epochs"):
        table.add_column(column, justify="right")
    for rank, row in enumerate(rows, 1):
        # Text, not str: rich would read "[link=...]" in a name as markup
        names = (
            [Text(visible_text(row["name"])), Text(visible_text(row["peer_id"][:16])),
             Text(visible_text(row["team"]) or "-")]
            if by is GroupBy.peer
            else [Text(visible_text(row["team"]) or "(no team)"), str(row["volunteers"])]
        )
        numbers = [
            f"{row['granted_samples']:,}",
            f"{row['claimed_samples']:,}",
            f"{row['compute_s'] / 3600:,.2f}",
            str(row["epochs"]),
        ]
        table.add_row(str(rank), *names, *numbers)
    # rich lays out 80 columns when the output is a file or a pipe: the names were cut to "voluntee…" there
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160).print(table)


@ledger_app.command()
def prove(
    source: SourceArgument,
    entry_index: Annotated[int, typer.Argument(help="0-based: line N of entries.jsonl is entry N-1.")],
    out: Annotated[Path | None, typer.Option(help="Write the proof to this file instead of stdout.")] = None,
    public_key: PublicKeyOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Print a proof that one entry is in the log signed by the newest checkpoint (check it with verify --proof)."""
    _start(verbose)
    try:
        proof = build_inclusion_proof(source, entry_index, pinned_key=public_key)
    except SwarmError as error:
        _failed(error, verbose)
    text = json.dumps(proof.model_dump(mode="json"), indent=2, ensure_ascii=False)
    if out is None:
        typer.echo(text)
        return
    try:
        out.write_text(text + "\n", encoding="utf-8")
    except OSError as error:
        _fail(f"cannot write {out}: {error.strerror}", 2)
    typer.echo(f"wrote the proof of entry {entry_index} (of {proof.tree_size}) to {out}", err=True)


@ledger_app.command()
def checkpoint(source: SourceArgument, public_key: PublicKeyOption = None, verbose: VerboseOption = False) -> None:
    """Print the newest signed checkpoint of a ledger that verifies; save it to pass later as --trusted."""
    _start(verbose)
    try:
        signed = latest_checkpoint(source, pinned_key=public_key)
    except SwarmError as error:
        _failed(error, verbose)
    typer.echo(signed.canonical_bytes().decode("utf-8"))
