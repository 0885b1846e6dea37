"""The `driftkit` command line. Subcommands live in driftkit.commands.* and are registered here."""

from __future__ import annotations

import importlib
import pkgutil

import typer

import driftkit.commands

app = typer.Typer(help="driftkit: continuous decoders for vision-language models.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """driftkit: continuous decoders for vision-language models."""


@app.command("decoders")
def decoders_command() -> None:
    """List the registered decoders, one line each."""
    from driftkit import list_decoders

    for name, summary in list_decoders().items():
        typer.echo(f"{name:<16} {summary}")


for _info in pkgutil.iter_modules(driftkit.commands.__path__):
    importlib.import_module(f"driftkit.commands.{_info.name}").register(app)


if __name__ == "__main__":
    app()
