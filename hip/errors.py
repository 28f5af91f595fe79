"""Errors that mean "the user asked for something wrong": the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input, config or path; the message names what and where."""
