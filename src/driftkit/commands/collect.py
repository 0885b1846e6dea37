"""`driftkit collect`: scripted-expert demonstrations from Meta-World saved as a LeRobotDataset v3.0."""

from __future__ import annotations

from pathlib import Path

import typer


def collect_command(
    tasks: str = typer.Option(..., help="Comma-separated task names or groups "
                              "(mt10, mt50, easy, medium, hard, very_hard)."),
    episodes: int = typer.Option(20, help="Successful episodes to keep per task."),
    out: Path = typer.Option(..., help="Dataset folder to create."),
    noise_std: float = typer.Option(0.0, help="Std of Gaussian noise added to every executed action."),
    alt_path_prob: float = typer.Option(0.0, help="Probability of a left/right detour before the expert takes over."),
    detour_offset: float = typer.Option(0.12, help="Sideways distance (m) of the detour via-point."),
    max_steps: int = typer.Option(300, help="Step limit of an episode (episodes end at first success)."),
    keep_failures: bool = typer.Option(False, help="Also keep episodes that did not succeed."),
    image: bool = typer.Option(False, help="Record the 64x64 corner2 camera as video."),
    image_size: int = typer.Option(64, help="Camera image height and width."),
    seed: int = typer.Option(100, help="Environment and noise seed."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset at OUT."),
) -> None:
    """Collect Meta-World demonstrations into a LeRobotDataset v3.0 folder."""
    from driftkit.envs.collect import CollectConfig, collect

    try:
        cfg = CollectConfig(tasks=tasks.split(","), episodes=episodes, noise_std=noise_std,
                            alt_path_prob=alt_path_prob, detour_offset=detour_offset, max_steps=max_steps,
                            success_only=not keep_failures, image=image, image_size=image_size, seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    summary = collect(cfg, out, overwrite=overwrite)
    for task in cfg.tasks_resolved:
        typer.echo(f"{task:<30} kept {summary.kept[task]:>4} of {summary.attempts[task]:>4} attempts")
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("collect")(collect_command)
