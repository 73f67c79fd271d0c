"""seqio tasks of the prompt tuning papers: registrations, preprocessors, postprocessors, metrics.

`import tasks` registers every task. Never imports `prompt_tuning.train`.
"""

from tasks.labels import label_strings, register_labels
