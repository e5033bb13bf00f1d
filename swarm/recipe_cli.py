"""`swarm recipe ...`: check recipes before a run, see every default they resolve to, export the schema.

Problems are printed one per line as `FILE: KEY.PATH: what to fix`, all of them in one go, and the command
exits 2; nothing here prints a traceback, whatever the file holds. `validate` also looks at the data a recipe names
where it is on this machine (`swarm.data.check_local_data`), with the readers a launch uses.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
import yaml

from swarm.logs import VerboseOption, setup_logging
from swarm.recipe import Recipe, RecipeError, RecipeProblem, load_recipe

recipe_app = typer.Typer(help="Check and inspect recipes.", no_args_is_help=True)

_INVALID = 2  # exit code for invalid input, as everywhere in swarm


def check_recipe_file(path: str, check_data: bool = True) -> dict[str, Any]:
    """One file's validation report: the form `swarm recipe validate --json` prints for each file.

    A recipe that passes the schema also gets `data`: whether its data was checked and the note that says what was
    checked or why not; problems with the data make it invalid like any other. `check_data=False` skips the data.
    """
    try:
        recipe = load_recipe(path)
    except RecipeError as error:
        return {"file": path, "valid": False, "problems": [problem.model_dump() for problem in error.problems]}
    if check_data:
        from swarm.data import check_local_data

        check = check_local_data(recipe.data, recipe.tokenizer)
        data, problems = {"checked": check.checked, "note": check.note}, check.problems
    else:
        data, problems = {"checked": False, "note": "data not checked: --no-data"}, []
    return {"file": path, "valid": not problems, "run_id": recipe.run.id, "fingerprint": recipe.fingerprint,
            "data": data, "problems": [problem.model_dump() for problem in problems]}


def _start(verbose: bool) -> None:
    if verbose:
        setup_logging(verbose=True, libraries=False)


def _print_problems(source: str, problems: list[RecipeProblem]) -> None:
    for problem in problems:
        typer.echo(f"{source}: {problem}", err=True)


@recipe_app.command()
def validate(
    files: Annotated[list[str], typer.Argument(help="Recipe files (YAML).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON report for all files on stdout.")] = False,
    no_data: Annotated[bool, typer.Option("--no-data", help="Check the recipe alone, not the data it names.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Check recipes the way a launch would, reporting every problem of every file at once.

    The data a recipe names is checked too where it is on this machine (files, a local dataset, this Python's
    standard library), from its first rows: the files can be read, the split exists, `data.text_field` is in the
    rows, and there is text to train on. Data up to 64 MB is read whole and split as a launch splits it, so a
    training or validation split too small for one sample of `data.seq_len` is a problem here too, with the launch's
    own words; files that are not valid UTF-8 get a note. A Hub dataset (or tokenizer) is not fetched: it is read at
    launch.

    Valid files print `ok: FILE (run RUN_ID); data checked: ...` (or `data not checked: WHY`); each problem prints
    `FILE: KEY.PATH: message` on stderr. Exits 0 when every file is valid, 2 otherwise.
    """
    _start(verbose)
    reports = [check_recipe_file(path, check_data=not no_data) for path in files]
    invalid = [report for report in reports if not report["valid"]]
    if as_json:
        typer.echo(json.dumps({"valid": not invalid, "files": reports}, indent=2))
    else:
        for report in reports:
            if report["valid"]:
                typer.echo(f"ok: {report['file']} (run {report['run_id']}); {report['data']['note']}")
            else:
                _print_problems(report["file"], [RecipeProblem(**problem) for problem in report["problems"]])
        if invalid and len(reports) > 1:
            typer.echo(f"{len(invalid)} of {len(reports)} recipes have problems", err=True)
    if invalid:
        raise typer.Exit(_INVALID)


@recipe_app.command()
def show(
    file: Annotated[str, typer.Argument(help="Recipe file (YAML).", show_default=False)],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the recipe alone as JSON, the form peers receive from the swarm.")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Print the recipe as the swarm will run it: every default filled in, data paths resolved.

    The YAML form starts with a comment naming the file and the recipe fingerprint; peers of one run share it.
    """
    _start(verbose)
    try:
        recipe = load_recipe(file)
    except RecipeError as error:
        _print_problems(file, error.problems)
        raise typer.Exit(_INVALID) from None
    typer.echo(render_recipe(recipe, source=file, as_json=as_json), nl=False)


def render_recipe(recipe: Recipe, source: str, as_json: bool = False) -> str:
    """The text `swarm recipe show` prints; parsing it back gives an equal `Recipe`."""
    resolved = recipe.model_dump(mode="json")
    if as_json:
        return json.dumps(resolved, indent=2) + "\n"
    header = f"# {source}: resolved recipe, fingerprint {recipe.fingerprint}\n"
    return header + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, width=120)


@recipe_app.command()
def schema(verbose: VerboseOption = False) -> None:
    """Print the recipe's JSON schema, for editor completion and checks.

    For example, save it as recipe.schema.json and start a recipe with
    `# yaml-language-server: $schema=recipe.schema.json`.
    """
    _start(verbose)
    document = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Recipe.model_json_schema()}
    typer.echo(json.dumps(document, indent=2))
