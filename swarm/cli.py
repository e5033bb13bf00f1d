"""The `swarm` command line. Entry points are thin: parse, build, run, close; the logic lives in the packages."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="swarm",
    help="Volunteer distributed training: pool idle GPUs to train open models together, with verifiable credit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_groups() -> None:
    from swarm.recipe_cli import recipe_app

    app.add_typer(recipe_app, name="recipe")


def main() -> None:
    """Console-script entry: user errors print one clear message and exit 1 or 2, never a traceback."""
    from swarm.errors import SwarmError
    from swarm.recipe import RecipeError

    _register_groups()
    try:
        app()
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except SwarmError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
