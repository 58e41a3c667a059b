"""Errors shared by the package's user-facing entry points."""


class UserError(ValueError):
    """A mistake in user input: printed as one line by the CLI."""
