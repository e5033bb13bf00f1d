"""Errors a user can act on. The CLI prints them without a traceback and exits with their code."""


class SwarmError(Exception):
    """A runtime problem with a message that says what to do next (exit code 1)."""

    exit_code = 1


class UsageError(SwarmError):
    """Invalid input: a bad flag, file or recipe (exit code 2)."""

    exit_code = 2
