"""`driftkit eval`: closed-loop Meta-World evaluation of trained checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer


def _labels(policies: list, paths: list[Path]) -> list[str]:
    """Decoder registry name per checkpoint; the folder name is added where two would collide."""
    names = [f"{p.kind}/{p.config.decoder}" if p.kind != "state" else p.config.decoder for p in policies]
    return [f"{n} ({path.name})" if names.count(n) > 1 else n for n, path in zip(names, paths)]


def _resolve_checkpoint(path: Path) -> Path:
    from driftkit.train.checkpoint import resolve_policy_dir

    try:
        return resolve_policy_dir(path)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err)) from None


def _task_map(checkpoint: Path, policy, dataset: Path | None) -> dict[str, int] | None:
    from driftkit.train.checkpoint import training_task_map

    try:
        return training_task_map(checkpoint, getattr(policy.config, "num_tasks", 1), dataset)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def eval_command(
    checkpoint: list[Path] = typer.Option(..., help="Checkpoint folder, or a run folder (its newest checkpoint); "
                                          "repeat the option for several."),
    tasks: str = typer.Option("reach-v3", help="Comma-separated task names or groups."),
    episodes: int = typer.Option(10, help="Episodes per task and seed."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated evaluation seeds."),
    n_action_steps: int = typer.Option(8, help="Actions executed from each chunk before replanning."),
    max_steps: int = typer.Option(300, help="Step limit of an episode."),
    num_samples: int = typer.Option(1, help="Samples drawn per chunk."),
    steps: int = typer.Option(None, help="Integration steps of iterative decoders (default: the decoder's)."),
    select: str = typer.Option(None, help="How to pick one of several samples (passed to policy.predict)."),
    temperature: float = typer.Option(None, help="Sampling temperature of stochastic decoders (0 = deterministic; "
                                      "default: the decoder's own)."),
    sample_seed: int = typer.Option(0, help="Seed of stochastic decoders' sampling noise (drawn per task and "
                                    "evaluation seed, so a run repeats exactly; another value, other noise)."),
    image: bool = typer.Option(False, help="Render the corner2 camera for image-conditioned policies."),
    out: Path = typer.Option(..., help="Folder for results.json, results.md, success_vs_latency.png."),
    dataset: Path = typer.Option(None, help="Training dataset (for its task_index map); default: the one in "
                                 "each checkpoint's config.json."),
    visual_keep: float = typer.Option(None, help="VLM policies: keep this share of each image's visual tokens "
                                      "and merge the others into one (training-free token reduction)."),
    workers: int = typer.Option(1, help="Processes to spread the (checkpoint, task, seed) units over, one torch "
                                "thread each (rendering is single-threaded: use one per core)."),
) -> None:
    """Evaluate checkpoints on Meta-World and write results.json, results.md and a success-vs-latency plot."""
    from driftkit.eval import EvalConfig, evaluate
    from driftkit.policy import load_policy

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        cfg = EvalConfig(tasks=tasks.split(","), episodes=episodes, seeds=seed_list, n_action_steps=n_action_steps,
                         max_steps=max_steps, num_samples=num_samples, steps=steps, select=select, image=image,
                         visual_keep=visual_keep, temperature=temperature, sample_seed=sample_seed)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    checkpoint = [_resolve_checkpoint(path) for path in checkpoint]
    policies = [load_policy(path) for path in checkpoint]
    labels = _labels(policies, checkpoint)
    task_maps = {label: _task_map(path, p, dataset) for label, path, p in zip(labels, checkpoint, policies)}
    if workers < 1:
        raise typer.BadParameter(f"got --workers {workers}, must be >= 1")
    runs = dict(zip(labels, checkpoint if workers > 1 else policies))
    results = evaluate(runs, cfg, out, task_maps=task_maps, workers=workers)
    for row in results["summary"]:
        if row["group"] == "all":
            typer.echo(f"{row['decoder']:<24} success {100 * row['success_rate']:.1f}% "
                       f"± {100 * row['success_se']:.1f}  ms/chunk {row['chunk_ms_median']:.2f}")
    typer.echo(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'success_vs_latency.png'}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
