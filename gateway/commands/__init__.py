"""Management commands of the CLI (keys, usage)."""
