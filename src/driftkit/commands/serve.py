"""`driftkit serve`: serve a trained policy to robots over websockets (openpi's protocol, see driftkit.serving)."""

from __future__ import annotations

from pathlib import Path

import typer


def _served_task_map(checkpoint: Path, policy) -> dict[str, int] | None:
    """instruction -> task_index of the training data, for state policies trained on several tasks (None when
    the checkpoint names no readable LeRobot dataset: clients then send task_index)."""
    from driftkit.train.checkpoint import training_task_map

    num_tasks = getattr(policy.config, "num_tasks", 1)
    if num_tasks <= 1:
        return None
    try:
        return training_task_map(checkpoint, num_tasks)
    except (OSError, ValueError, KeyError) as err:
        typer.echo(f"note: no task map ({err}); clients must send task_index", err=True)
        return None


def serve_command(
    checkpoint: Path = typer.Option(..., help="Checkpoint or policy folder, or a run folder (its newest "
                                    "checkpoint)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, help="TCP port (0: any free port, printed on start)."),
    max_batch: int = typer.Option(16, help="Most requests run as one batched predict."),
    batch_window_ms: float = typer.Option(2.0, help="How long the first waiting request waits for others to "
                                          "batch with (ms; 0 = only those already waiting)."),
    device: str = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, ..."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the sampling path (CUDA graphs on a GPU) "
                                 "and warm it up before serving (VLM policies; see driftkit.backbones.static)."),
) -> None:
    """Serve a policy over websockets: msgpack observations in, action chunks out; GET /healthz answers 200."""
    from driftkit.devices import resolve_device
    from driftkit.policy import load_policy
    from driftkit.serving import PolicyServer
    from driftkit.train.checkpoint import resolve_policy_dir

    if max_batch < 1:
        raise typer.BadParameter(f"got --max-batch {max_batch}, must be >= 1")
    if batch_window_ms < 0:
        raise typer.BadParameter(f"got --batch-window-ms {batch_window_ms}, must be >= 0")
    try:
        path, device = resolve_policy_dir(checkpoint), resolve_device(device)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise typer.BadParameter(str(err)) from None
    policy = load_policy(path, device=device)
    if compile:
        if not hasattr(policy, "compile_static"):
            raise typer.BadParameter(f"--compile supports VLM policies; this checkpoint holds a {policy.kind} policy")
        from driftkit.backbones.static import warm_up

        policy.compile_static()
        warm_up(policy)
    server = PolicyServer(policy, host, port, max_batch=max_batch, batch_window_ms=batch_window_ms,
                          task_map=_served_task_map(path, policy))

    def ready(s: PolicyServer) -> None:
        meta = s.metadata
        typer.echo(f"serving {meta['kind']}/{meta['decoder']} from {path} on ws://{s.host}:{s.port} "
                   f"(horizon {meta['horizon']}, action_dim {meta['action_dim']}, nfe {meta['nfe']}, "
                   f"device {s.device}; health: http://{s.host}:{s.port}/healthz)", )

    server.run(ready)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
