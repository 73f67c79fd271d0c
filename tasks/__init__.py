"""seqio tasks of the prompt tuning papers: registrations, preprocessors, postprocessors, metrics.

`import tasks` registers every task and mixture. Never imports `prompt_tuning.train`.
"""

# isort: off
# Task registrations first: `mixtures` derives few-shot and task-id variants of what they register.
from tasks import builtin, glue, qa, sentence, superglue  # noqa: F401
from tasks import mixtures  # noqa: F401

# isort: on
from tasks.labels import label_strings, register_labels

__all__ = ["label_strings", "register_labels"]
