"""Click commands (filled in by the module's feature work)."""
import click  # noqa: F401

COMMANDS: list = []
