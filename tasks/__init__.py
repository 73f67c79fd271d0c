"""seqio tasks of the prompt tuning papers: registrations, preprocessors, postprocessors, metrics.

`import tasks` registers every task and mixture. Never imports `prompt_tuning.train`.
"""

from tasks import glue, superglue  # noqa: F401  (registrations; before mixtures)
from tasks import builtin, qa, sentence  # noqa: F401  (registrations)
from tasks import mixtures  # noqa: F401  (mixtures and few-shot variants of the tasks above)
from tasks.labels import label_strings, register_labels

__all__ = ["label_strings", "register_labels"]
