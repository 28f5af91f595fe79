"""The `hip` command line (placeholder replaced below)."""
