"""Simulated benchmarks. Only driftkit.envs.metaworld imports a simulator; import it (or
driftkit.envs.collect, which does so lazily) explicitly when you need one."""

from driftkit.envs.tasks import DIFFICULTY, GROUPS, MT10, MT50, difficulty, instruction, resolve_tasks

__all__ = ["DIFFICULTY", "GROUPS", "MT10", "MT50", "difficulty", "instruction", "resolve_tasks"]
