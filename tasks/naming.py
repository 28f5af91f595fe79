"""Names shared by the Prefect tasks: artifact keys and MLflow run names."""

from __future__ import annotations


def artifact_key(text: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) made from `text`."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def run_name(stage: str, what: str, variant: str | None = None) -> str:
    """An MLflow run name that says stage, benchmark (or data set) and variant."""
    return "-".join(part for part in (stage, what, variant) if part)
