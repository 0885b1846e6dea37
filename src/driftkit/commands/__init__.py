"""CLI subcommands. Each module defines `register(app: typer.Typer)`; heavy imports stay inside commands."""
