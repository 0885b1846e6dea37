"""`driftkit demo`: the main job on its built-in default (every decoder on the offline suite)."""

from __future__ import annotations

import typer


def demo(
    out: str = typer.Option("outputs/demo", help="Folder for results.json, results.md, demo.png and runs/ "
                                                 "(the trainer's run of each model)."),
    steps: int = typer.Option(1200, help="Training steps per decoder and task."),
    seed: int = typer.Option(0, help="Seed for model initialisation and training data."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    quiet: bool = typer.Option(False, help="No progress bars or per-row output."),
) -> None:
    """Train every decoder on the built-in offline suite, print one table and write a plot."""
    import time

    import torch

    from driftkit.demo.runner import TrainSettings
    from driftkit.demo.suite import SuiteSettings, markdown_table, run_suite, write_results

    torch.set_num_threads(threads)
    settings = SuiteSettings(train=TrainSettings(steps=steps, seed=seed), out_dir=out)
    start = time.perf_counter()
    run = run_suite(settings, progress=not quiet)
    path = write_results(run, settings)
    typer.echo("\n" + markdown_table(run.rows))
    typer.echo(f"\nerr: RMS distance to the nearest true mode (target units); best of K: oracle over K={settings.k}.")
    typer.echo(f"wrote {path}/results.json, results.md, demo.png and the checkpoints under {path}/runs/ in "
               f"{time.perf_counter() - start:.0f} s")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
