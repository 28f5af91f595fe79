"""Prefect tasks: thin wrappers over `hip.*` adding retries, caching, logging and artifacts."""
