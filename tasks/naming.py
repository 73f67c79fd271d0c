"""How our task and mixture names relate to T5's, so that both registries live in one process.

The original T5 package (`t5.data.tasks`, `t5.data.mixtures`) registers GLUE, SuperGLUE and SQuAD
under names such as `glue_rte_v002`, `super_glue_boolq_v102`, `squad_v010_allanswers` and
`glue_v002_proportional`. seqio refuses a second provider of a name, so this project never
registers one of T5's names. A task derived from one of T5's keeps T5's name with one marker that
says which text format it reads:

- `taskless_<T5 name>`: T5's text without its leading task word, Lester et al. (2021)'s format and
  the default of prompt tuning (`taskless_glue_rte_v002` reads `sentence1: ... sentence2: ...`
  where T5 reads `rte sentence1: ... sentence2: ...`). The marker is google-research/prompt-tuning's
  for the same variant ("Any task that starts with `taskless` doesn't have the initial dataset
  text token"), so a gin file written for that code names the same data here.
- `<T5 name>_t5format`: T5's text byte for byte (`glue_rte_v002_t5format`), for comparing with
  T5-format training or fine-tuning runs.

SQuAD's T5 format (`question: ... context: ...`) has no task word, so its two variants read the
same text. Mixtures and derived tasks carry the marker of the tasks they hold
(`taskless_glue_v002_proportional`, `taskless_glue_rte_v002_fewshot_k8_seed0`,
`taskless_glue_mrpc_as_qqp_v002`). Tasks T5 does not have keep plain names (`builtin_sentiment`,
`mpqa`, `mrqa_bio_asq_v001`, `squad_to_mrqa_out_of_domain`); their `_prefixed` variants put a task
name in front of the text.
"""

TASKLESS_PREFIX = "taskless_"
T5FORMAT_SUFFIX = "_t5format"


def taskless(t5_name: str) -> str:
    """The name of the task-less variant of T5's task `t5_name` (`taskless_glue_rte_v002`)."""
    return TASKLESS_PREFIX + t5_name


def t5format(t5_name: str) -> str:
    """The name of our copy of T5's task `t5_name` in T5's own format (`glue_rte_v002_t5format`)."""
    return t5_name + T5FORMAT_SUFFIX
