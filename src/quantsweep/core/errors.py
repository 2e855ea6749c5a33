"""Errors that carry a one-line message for the user (the CLI turns them into exit code 2)."""


class InputError(Exception):
    """Bad input from the user: a missing file, an unreadable image, an impossible option."""
