"""Meta-World task names, benchmark lists and language instructions (plain data: no simulator import).

Difficulty splits are LeRobot's grouping of the MT50 tasks (easy 28, medium 11, hard 6, very_hard 5).
"""

from __future__ import annotations

MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")

DIFFICULTY = {
    "easy": ("button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3",
             "button-press-wall-v3", "coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3",
             "door-open-v3", "door-unlock-v3", "drawer-close-v3", "drawer-open-v3", "faucet-close-v3",
             "faucet-open-v3", "handle-press-v3", "handle-press-side-v3", "handle-pull-v3",
             "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3", "plate-slide-back-v3",
             "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3", "reach-wall-v3",
             "window-close-v3", "window-open-v3", "peg-unplug-side-v3"),
    "medium": ("basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3",
               "hammer-v3", "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3"),
    "hard": ("assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3"),
    "very_hard": ("shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"),
}

MT50 = tuple(sorted(t for tasks in DIFFICULTY.values() for t in tasks))

# One readable sentence per task: the language instruction stored with every demonstration.
INSTRUCTIONS = {
    "assembly-v3": "pick up the nut and put it on the peg",
    "basketball-v3": "put the ball into the basket",
    "bin-picking-v3": "move the puck from one bin to the other",
    "box-close-v3": "pick up the lid and close the box",
    "button-press-topdown-v3": "press the button from above",
    "button-press-topdown-wall-v3": "reach over the wall and press the button from above",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "get around the wall and press the button",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "lift the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "turn the lock to lock the door",
    "door-open-v3": "open the door",
    "door-unlock-v3": "turn the lock to unlock the door",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-close-v3": "turn the faucet handle to close it",
    "faucet-open-v3": "turn the faucet handle to open it",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "put the gripper into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "pull the peg out sideways",
    "pick-out-of-hole-v3": "lift the puck out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck, go over the wall and place it at the goal",
    "plate-slide-back-side-v3": "slide the plate out of the cabinet from the side",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-side-v3": "slide the plate into the cabinet from the side",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "reach-v3": "reach the goal",
    "reach-wall-v3": "reach over the wall to the goal",
    "shelf-place-v3": "put the puck on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grab the stick and pull the box with it",
    "stick-push-v3": "grab the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "slide the window closed",
    "window-open-v3": "slide the window open",
}

GROUPS = {"mt10": MT10, "mt50": MT50, **DIFFICULTY}


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """"reach-v3,push-v3" or a group name (mt10, mt50, easy, medium, hard, very_hard), or a mix -> task names
    in order without repeats. Unknown names raise a ValueError that lists the valid ones."""
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p and p.strip()]
    if not parts:
        raise ValueError(f"got tasks={spec!r}; give at least one task name or group")
    out: list[str] = []
    for part in parts:
        names = GROUPS.get(part.lower(), (part,))
        for name in names:
            if name not in INSTRUCTIONS:
                raise ValueError(f"unknown Meta-World task {name!r}; valid groups: {sorted(GROUPS)}; "
                                 f"valid tasks: {', '.join(MT50)}")
            if name not in out:
                out.append(name)
    return out


def instruction(task: str) -> str:
    """The language instruction of a task."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown Meta-World task {task!r}; valid tasks: {', '.join(MT50)}")
    return INSTRUCTIONS[task]


def difficulty(task: str) -> str:
    """easy | medium | hard | very_hard."""
    for split, tasks in DIFFICULTY.items():
        if task in tasks:
            return split
    raise ValueError(f"unknown Meta-World task {task!r}; valid tasks: {', '.join(MT50)}")
