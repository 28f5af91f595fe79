"""Errors that mean "the user asked for something wrong": the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input, config or path; the message names what and where."""


def unknown_name(kind: str, name: str, choices: list[str] | tuple[str, ...]) -> str:
    """`unknown KIND 'x' (did you mean 'y'?); available: a, b` — one wording for every lookup."""
    import difflib

    hint = difflib.get_close_matches(name, list(choices), n=1)
    return (
        f"unknown {kind} {name!r}"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f"; available: {', '.join(choices) or 'none'}"
    )


class InputShapeError(UserError, ValueError):
    """Data whose shape does not fit the model (a ValueError too, for library callers)."""


class LabelRangeError(UserError, ValueError):
    """A label (or mask class) outside the task's classes."""
