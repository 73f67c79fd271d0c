"""Label strings of classification tasks, for class-label prompt initialization (gin's LABELS)
and the analysis tools. Evaluation reads the labels each task binds into its postprocessor."""

from collections.abc import Sequence

_LABELS: dict[str, tuple[str, ...] | None] = {}


def register_labels(task_name: str, labels: Sequence[str] | None) -> None:
    """Records the label strings of `task_name` (None for a generative task)."""
    _LABELS[task_name] = None if labels is None else tuple(labels)


def label_strings(task_name: str) -> tuple[str, ...] | None:
    """Returns the label strings of a registered task, or None for a generative task.

    Raises:
      KeyError: `task_name` was not registered by `tasks`.
    """
    if task_name not in _LABELS:
        known = ", ".join(sorted(_LABELS)[:20])
        raise KeyError(
            f"No task named {task_name!r} is registered by `tasks` (first known: {known}). "
            "Check the name, or import the module that registers it."
        )
    return _LABELS[task_name]
