"""`driftkit train`: train a policy from a named preset plus typed `--set key=value` overrides.

    driftkit train --preset toy --set decoder=drift --set optim.lr=3e-4 --set steps=200
    driftkit train --resume --set output_dir=runs/toy          # continue a run with its saved config
    accelerate launch --multi_gpu --num_processes 2 -m driftkit.cli train --preset toy   # DDP, same global batch
    (the global batch optim.batch_size is split over the processes; on a machine without GPUs the
    processes join one gloo CPU group; FSDP: `accelerate launch --use_fsdp ...` or an accelerate config)
"""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Named configuration (see --list-presets)."),
        overrides: list[str] = typer.Option(
            [], "--set", "-s", help="KEY=VALUE override, e.g. optim.lr=3e-4 or decoder=drift; repeatable."
        ),
        resume: bool = typer.Option(
            False, "--resume",
            help="Continue from the newest checkpoint in output_dir (without --preset: with the config saved there).",
        ),
        list_presets_flag: bool = typer.Option(False, "--list-presets", help="List the presets and exit."),
        show_config: bool = typer.Option(False, "--show-config", help="Print the resolved config as JSON and exit."),
    ) -> None:
        """Train a policy (encoder + any decoder) with Accelerate; checkpoints go to output_dir/checkpoints."""
        import json

        from driftkit.train.config import apply_overrides, list_presets, make_config, resume_config

        if list_presets_flag:
            for name, summary in list_presets().items():
                typer.echo(f"{name:<18} {summary}")
            return
        try:
            if resume and preset is None:
                cfg = resume_config(overrides)  # the run's own config from its newest checkpoint
            else:
                cfg = make_config(preset if preset is not None else "toy", overrides)
                if resume and not cfg.resume:
                    cfg = apply_overrides(cfg, ["resume=latest"])
        except (ValueError, TypeError) as err:
            raise typer.BadParameter(str(err)) from None
        if show_config:
            typer.echo(json.dumps(cfg.to_dict(), indent=2))
            return
        from driftkit.train.trainer import train

        result = train(cfg)
        if result.is_main_process:
            typer.echo(f"trained {result.step} steps, last loss {result.last_loss}; checkpoint: {result.checkpoint}")
