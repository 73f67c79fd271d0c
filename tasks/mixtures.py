"""Mixtures: GLUE and SuperGLUE (proportional and equal), multi-task mixtures with `task_ids`.

Mixtures are `LazyMixture`s: their task names are resolved on first use, not at registration, so
this module may be imported before or after the modules that register the tasks.

Rates. `_proportional` mixtures sample each task in proportion to its number of training examples,
capped at `PROPORTIONAL_MAXIMUM` = 2**19 (T5's examples-proportional mixing limit K, through
`seqio.utils.mixing_rate_num_examples`, T5's `rate_num_examples`); the cap binds on no GLUE or
SuperGLUE task. `_equal` mixtures sample every task at the same rate.

Multi-task with task ids. `<mixture>_with_task_ids` mixes, at the same rates as `<mixture>`,
variants of its tasks named `<task>_with_task_id_<i>`, `i` being the task's position in the
mixture's task list (`MIXTURE_TASKS[name]`). Each variant is its base task plus one last
preprocessing step that adds `task_ids`, an int32 scalar, and the output feature
`TASK_IDS_FEATURE` (a `PassThroughVocabulary` feature of rank 0 without EOS): because it is an
output feature, `get_dataset` keeps it (seqio keeps only output features in mixtures) and the
trainer's feature converter passes it on as `task_ids [B]`. Evaluating a variant task alone also
yields `task_ids`. Variants are registered here for base tasks already registered, and otherwise
when their mixture is first used. The structured-prompt multi-task setting (Sec. 4: every batch
holds roughly the same number of examples of each task) is
`taskless_glue_v002_equal_with_task_ids`. The mixtures named after T5's
(`taskless_glue_v002_proportional`, ...; `tasks.naming`) hold the task-less variants of T5's tasks
and have no `task_ids`.

Also: `builtin_equal` and `builtin_equal_with_task_ids` over the built-in tasks, and
`squad_to_mrqa_out_of_domain` (train on SQuAD; its validation split holds SQuAD and the six
out-of-domain MRQA datasets, for zero-shot domain transfer). QQP↔MRPC transfer needs no mixture:
train on `taskless_glue_qqp_v002` and evaluate on `taskless_glue_mrpc_v002` (or the reverse).

Importing this module also registers, for every GLUE/SuperGLUE task of the lists below that is
registered by then (`tasks/__init__.py` imports `tasks.glue` and `tasks.superglue` first), the
few-shot variants `<task>_fewshot_k<K>_seed<S>` (K in `tasks.splits.FEW_SHOT_KS`, S in 0..2) and
the structured-prompt variant `<task>_devsplit_seed0` (see `tasks.splits`).
"""

import functools
from collections.abc import Callable, Sequence

import seqio
import tensorflow as tf

from tasks import splits

PROPORTIONAL_MAXIMUM = 2**19
TASK_IDS = "task_ids"
TASK_IDS_FEATURE = seqio.Feature(
    vocabulary=seqio.PassThroughVocabulary(1), add_eos=False, dtype=tf.int32, rank=0
)
# T5's GLUE/SuperGLUE training mixtures, without WNLI (T5 trains on WSC instead) and without
# T5's DPR task, which this project does not register.
GLUE_TASKS = (
    "taskless_glue_cola_v002", "taskless_glue_sst2_v002", "taskless_glue_mrpc_v002",
    "taskless_glue_qqp_v002", "taskless_glue_stsb_v002", "taskless_glue_mnli_v002",
    "taskless_glue_qnli_v002", "taskless_glue_rte_v002",
)  # fmt: skip
SUPER_GLUE_TASKS = (
    "taskless_super_glue_boolq_v102", "taskless_super_glue_cb_v102",
    "taskless_super_glue_copa_v102", "taskless_super_glue_multirc_v102",
    "taskless_super_glue_record_v102", "taskless_super_glue_rte_v102",
    "taskless_super_glue_wic_v102", "taskless_super_glue_wsc_v102_simple_train",
)  # fmt: skip
BUILTIN_TASKS = ("builtin_sentiment", "builtin_topic", "builtin_keyword")
# The task list of every mixture registered here, in `task_ids` order.
MIXTURE_TASKS: dict[str, tuple[str, ...]] = {}


def examples_proportional_rate(task: seqio.Task, maximum: int = PROPORTIONAL_MAXIMUM) -> float:
    """Rate = number of training examples, capped at `maximum` (T5's `rate_num_examples`)."""
    return seqio.utils.mixing_rate_num_examples(task, maximum=maximum)


def _registered(name: str) -> bool:
    return name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()


class LazyMixture(seqio.Mixture):
    """A `seqio.Mixture` that resolves its task names on first use instead of at registration."""

    def __init__(
        self,
        name: str,
        tasks: Sequence,
        default_rate=None,
        before_resolve: Callable[[], None] | None = None,
        **kwargs,
    ):
        """Records the arguments of `seqio.Mixture` for later.

        Args:
          name: the mixture's name.
          tasks: task or mixture names (or `(name, rate)` pairs), as for `seqio.Mixture`.
          default_rate: as for `seqio.Mixture`.
          before_resolve: called once just before the names are resolved (e.g. to register
            derived tasks).
          **kwargs: other `seqio.Mixture` arguments.
        """
        self.__dict__["_name"] = name
        self.__dict__["_before_resolve"] = before_resolve
        self.__dict__["_pending"] = dict(
            name=name, tasks=tasks, default_rate=default_rate, **kwargs
        )

    def __getattr__(self, attr: str):
        # Only reached for attributes not set yet: build the mixture, then look again.
        pending = self.__dict__.pop("_pending", None)
        if pending is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")
        try:
            if self.__dict__["_before_resolve"] is not None:
                self.__dict__["_before_resolve"]()
            names = [t if isinstance(t, str) else t[0] for t in pending["tasks"]]
            missing = [n for n in names if isinstance(n, str) and not _registered(n)]
            if missing:
                raise ValueError(
                    f"Mixture {pending['name']!r} uses tasks that are not registered: {missing}. "
                    "Import the modules that register them (`import tasks` registers all)."
                )
            seqio.Mixture.__init__(self, **pending)
        except BaseException:
            self.__dict__["_pending"] = pending
            raise
        return getattr(self, attr)


def register_mixture(
    name: str, task_names: Sequence[str], rate: float | Callable[[seqio.Task], float] = 1.0
) -> str:
    """Registers a `LazyMixture` of `task_names` at one rate (a number or a function of a task)."""
    MIXTURE_TASKS[name] = tuple(task_names)
    seqio.MixtureRegistry.add(name, list(task_names), default_rate=rate, mixture_cls=LazyMixture)
    return name


def add_task_ids(dataset: tf.data.Dataset, task_index: int) -> tf.data.Dataset:
    """Adds `task_ids`, an int32 scalar equal to `task_index`, to every example."""
    task_ids = tf.constant(task_index, tf.int32)
    return dataset.map(lambda example: {**example, TASK_IDS: task_ids})


def task_id_variant_name(task_name: str, task_index: int) -> str:
    """`<task>_with_task_id_<i>`."""
    return f"{task_name}_with_task_id_{task_index}"


def register_task_id_variant(task_name: str, task_index: int) -> str:
    """Registers (once) `<task>_with_task_id_<i>`: the task plus the `task_ids` feature."""
    name = task_id_variant_name(task_name, task_index)
    if name not in seqio.TaskRegistry.names():
        splits.derive_task(
            name,
            task_name,
            extra_preprocessors=[functools.partial(add_task_ids, task_index=task_index)],
            extra_features={TASK_IDS: TASK_IDS_FEATURE},
        )
    return name


def _register_variants(task_names: Sequence[str], only_registered: bool) -> None:
    for index, task_name in enumerate(task_names):
        if not only_registered or task_name in seqio.TaskRegistry.names():
            register_task_id_variant(task_name, index)


def register_multitask_mixture(
    name: str,
    task_names: Sequence[str],
    rate: float | Callable[[seqio.Task], float] = 1.0,
) -> str:
    """Registers a mixture of the tasks' `task_ids` variants (ids = positions in `task_names`).

    Args:
      name: the mixture's name.
      task_names: the base tasks, in `task_ids` order.
      rate: one rate for every task (a number, or a function of a task such as
        `examples_proportional_rate`); equal rates by default.

    Returns:
      `name`.
    """
    _register_variants(task_names, only_registered=True)
    variants = [task_id_variant_name(t, i) for i, t in enumerate(task_names)]
    MIXTURE_TASKS[name] = tuple(task_names)
    seqio.MixtureRegistry.add(
        name,
        variants,
        default_rate=rate,
        mixture_cls=LazyMixture,
        before_resolve=functools.partial(_register_variants, task_names, only_registered=False),
    )
    return name


register_mixture("taskless_glue_v002_proportional", GLUE_TASKS, examples_proportional_rate)
register_mixture("taskless_glue_v002_equal", GLUE_TASKS, 1.0)
register_multitask_mixture("taskless_glue_v002_equal_with_task_ids", GLUE_TASKS)
register_multitask_mixture(
    "taskless_glue_v002_proportional_with_task_ids", GLUE_TASKS, examples_proportional_rate
)
register_mixture(
    "taskless_super_glue_v102_proportional", SUPER_GLUE_TASKS, examples_proportional_rate
)
register_mixture("taskless_super_glue_v102_equal", SUPER_GLUE_TASKS, 1.0)
register_multitask_mixture("taskless_super_glue_v102_equal_with_task_ids", SUPER_GLUE_TASKS)
register_multitask_mixture(
    "taskless_super_glue_v102_proportional_with_task_ids",
    SUPER_GLUE_TASKS,
    examples_proportional_rate,
)
register_mixture("builtin_equal", BUILTIN_TASKS, 1.0)
register_multitask_mixture("builtin_equal_with_task_ids", BUILTIN_TASKS)
register_mixture(
    "squad_to_mrqa_out_of_domain",
    (
        "taskless_squad_v010_allanswers",
        "mrqa_bio_asq_v001",
        "mrqa_drop_v001",
        "mrqa_duo_rc_v001",
        "mrqa_race_v001",
        "mrqa_relation_extraction_v001",
        "mrqa_textbook_qa_v001",
    ),
    1.0,
)

splits.register_variants_of_registered(
    GLUE_TASKS + SUPER_GLUE_TASKS, ks=splits.FEW_SHOT_KS, seeds=splits.FEW_SHOT_SEEDS
)
