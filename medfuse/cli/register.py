"""CLI: placeholder until its issue lands (no command registered yet)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to *app*."""
