"""Errors the command line reports as one line."""


class UserError(ValueError):
    """A mistake in user input: printed as one line by the CLI."""
