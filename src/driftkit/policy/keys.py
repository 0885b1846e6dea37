"""LeRobot's keys for batches and observations, shared by datasets, policies, trainer, evaluator and server.

    observation.state          [B, S] float
    observation.images.<cam>   [B, 3, H, W] float in [0, 1], one key per camera
    task                       B language instructions (list of str)
    task_index                 [B] long (the state policy's learned task embedding)
    action                     [B, T, D] float
    action_is_pad              [B, T] bool, True past the episode end
"""

STATE_KEY = "observation.state"
IMAGES_PREFIX = "observation.images."
TASK_KEY = "task"
TASK_INDEX_KEY = "task_index"
ACTION_KEY = "action"
ACTION_PAD_KEY = "action_is_pad"


def camera_key(name: str) -> str:
    """'corner2' or 'observation.images.corner2' -> 'observation.images.corner2'."""
    return name if name.startswith(IMAGES_PREFIX) else IMAGES_PREFIX + name
