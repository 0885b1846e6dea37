"""The built-in offline suite behind `driftkit demo`: small tasks with known answers."""

from driftkit.demo.tasks import TASKS, Task, TaskBatch, make_task

__all__ = ["TASKS", "Task", "TaskBatch", "make_task"]
