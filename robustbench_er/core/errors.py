"""Exceptions for bad user input."""


class UserInputError(ValueError):
    """Bad input from a user: one clear sentence; the CLI exits with status 2."""
