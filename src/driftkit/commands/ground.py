"""`driftkit ground`: train a VLM policy (through the one trainer) on a synthetic grounding benchmark and score it on the test split.

    driftkit ground --task spatial --decoder "residual_flow[regression]" --steps 1000 --seed 0 --out runs/g0
    driftkit ground --task temporal --decoder lm_tokens --backbone qwen2_5_vl-mid --set train_size=8192

Writes <out>/results.json (metrics of every evaluation variant, NFE, ms per prediction) and metrics.jsonl;
the policy too with --save-policy. See docs/grounding.md.
"""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("ground")
    def ground_command(
        task: str = typer.Option("spatial", "--task", help="spatial (boxes) or temporal (intervals)."),
        decoder: str = typer.Option("regression", "--decoder", "-d",
                                    help="Decoder spec, e.g. regression, lm_tokens, flow, residual_flow\\[lm_tokens]."),
        steps: int = typer.Option(1000, "--steps", help="Training steps."),
        seed: int = typer.Option(0, "--seed", help="Seed of weights, batch order and noise (data fixed)."),
        out: str = typer.Option(..., "--out", "-o", help="Run directory; results.json is written there."),
        backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone preset (default qwen2_5_vl-tiny)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
        overrides: list[str] = typer.Option(
            [], "--set", "-s", help="FIELD=VALUE of GroundingExperimentConfig, e.g. train_size=512; repeatable."),
        save_policy: bool = typer.Option(False, "--save-policy", help="Also write the trained policy to OUT/policy."),
    ) -> None:
        """Train and evaluate one decoder on a synthetic grounding task (driftkit.grounding.experiment)."""
        from pathlib import Path

        from driftkit.grounding.experiment import run_experiment

        try:
            cfg = _make_config(task=task, decoder=decoder, steps=steps, seed=seed, backbone=backbone,
                               batch_size=batch_size, lr=lr, save_policy=save_policy, overrides=overrides)
        except (ValueError, TypeError) as err:
            raise typer.BadParameter(str(err)) from None
        results = run_experiment(cfg, out)
        for ev in results["evaluations"]:
            shown = ", ".join(f"{k} {v:.2f}" for k, v in ev["metrics"].items())
            typer.echo(f"{ev['label']}: {shown}; NFE {ev['nfe']}, {ev['ms_per_prediction']:.2f} ms/prediction")
        typer.echo(f"results: {Path(out) / 'results.json'}")


def _make_config(overrides: list[str], **fields):
    """GroundingExperimentConfig from the options given plus FIELD=VALUE overrides (values parsed as JSON when
    they parse, else kept as strings)."""
    import dataclasses
    import json

    from driftkit.grounding.experiment import GroundingExperimentConfig

    known = {f.name for f in dataclasses.fields(GroundingExperimentConfig)}
    values = {k: v for k, v in fields.items() if v is not None}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"got --set {item!r}; write FIELD=VALUE with FIELD one of {sorted(known)}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return GroundingExperimentConfig(**values)
