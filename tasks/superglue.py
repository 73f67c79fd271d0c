"""SuperGLUE tasks of T5 (`super_glue_<config>_v102`) under names of our own (`tasks.naming`).

Each task is registered twice: `taskless_super_glue_boolq_v102` reads `passage: ... question: ...`
(Lester et al. 2021 omit the task name) and `super_glue_boolq_v102_t5format` reads T5's `boolq
passage: ...`, byte for byte. Data: TFDS `super_glue/<config>:1.0.2`, as T5 and Lester et al.
Records without a label (test splits) are dropped and counted (`tasks.preprocessors`).

WSC is T5's "simple" cast (Lester et al. 2021, appendix A.3): the model writes the referent of the
`*marked*` pronoun. `taskless_super_glue_wsc_v102_simple_train` trains only on records whose
candidate referent is right; `taskless_super_glue_wsc_v102_simple_eval` (validation) scores whether
the generated referent is the candidate, against the record's label. AX-b and AX-g are cast as RTE
(`rte` prefix, AX-b's `sentence1`/`sentence2` read as `premise`/`hypothesis`), test split only; T5
gives them no metrics, here AX-b reports Matthews correlation (the SuperGLUE AX-b metric) and AX-g
accuracy, since their TFDS test records carry labels.

Every task's metric function also returns `mean_of_metrics` (`tasks.metrics`).
"""

import functools
from collections.abc import Callable, Mapping, Sequence

import seqio

from tasks import glue, metrics, postprocessors, preprocessors
from tasks.labels import register_labels
from tasks.vocabularies import t5_output_features

SUPER_GLUE_VERSION = "1.0.2"

BOOL_LABELS = ("False", "True")
CB_LABELS = ("entailment", "contradiction", "neutral")
COPA_LABELS = ("choice1", "choice2")
RTE_LABELS = ("entailment", "not_entailment")

# Text features in T5's order (sorted by name; WiC's given by T5, without the word offsets).
_FEATURES = {
    "boolq": ("passage", "question"),
    "cb": ("hypothesis", "premise"),
    "copa": ("choice1", "choice2", "premise", "question"),
    "rte": ("hypothesis", "premise"),
    "wic": ("sentence1", "sentence2", "word"),
    "axb": ("hypothesis", "premise"),
    "axg": ("hypothesis", "premise"),
}
_AXB_AS_RTE = {"premise": "sentence1", "hypothesis": "sentence2"}

_OUTPUT_FEATURES = t5_output_features()


def _source(config: str, splits: Sequence[str] | None = None) -> seqio.TfdsDataSource:
    return seqio.TfdsDataSource(
        tfds_name=f"super_glue/{config}:{SUPER_GLUE_VERSION}",
        splits=splits or ("train", "validation", "test"),
    )


def _classification(
    config: str,
    labels: Sequence[str],
    metric_fns: Sequence[Callable],
    *,
    prefixed: bool,
    benchmark: str | None = None,
    splits: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
) -> dict:
    """`glue.text_classification` of a TFDS `super_glue` config (prefix `benchmark` or `config`)."""
    prefix = (benchmark or config) if prefixed else None
    return glue.text_classification(
        f"super_glue/{config}", _source(config, splits), labels, _FEATURES[config], metric_fns,
        prefix, rename=rename,
    )  # fmt: skip


def _multirc(prefixed: bool) -> dict:
    """Keyword arguments of MultiRC: F1 over all answers and exact match per question."""
    text = functools.partial(preprocessors.multirc_text, prefix="multirc" if prefixed else None)
    return dict(
        source=_source("multirc"),
        preprocessors=[text, *preprocessors.tokenize_steps()],
        output_features=_OUTPUT_FEATURES,
        postprocess_fn=functools.partial(postprocessors.multirc, label_classes=BOOL_LABELS),
        metric_fns=[
            metrics.mean_of_metrics(
                metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match
            )
        ],
    )


def _record(prefixed: bool) -> dict:
    """Keyword arguments of ReCoRD: EM and F1, max over a query's answers."""
    text = functools.partial(preprocessors.record_text, prefix="record" if prefixed else None)
    return dict(
        source=_source("record"),
        preprocessors=[text, *preprocessors.tokenize_steps()],
        output_features=_OUTPUT_FEATURES,
        postprocess_fn=postprocessors.record,
        metric_fns=[metrics.mean_of_metrics(metrics.record_em_f1)],
    )


def _wsc_simple(train: bool, prefixed: bool) -> dict:
    """Keyword arguments of T5's simple WSC: train on right referents, evaluate on all."""
    text = functools.partial(
        preprocessors.wsc_simple_text,
        correct_referent_only=train,
        prefix="wsc:" if prefixed else None,
    )
    task = dict(
        source=_source("wsc.fixed", ["train"] if train else ["validation", "test"]),
        preprocessors=[text, *preprocessors.tokenize_steps()],
        output_features=_OUTPUT_FEATURES,
        metric_fns=[],
    )
    if not train:
        task.update(
            postprocess_fn=postprocessors.wsc_simple,
            metric_fns=[metrics.mean_of_metrics(metrics.accuracy)],
        )
    return task


_ACCURACY = (metrics.accuracy,)
_CB_METRICS = (metrics.mean_multiclass_f1(num_classes=3), metrics.accuracy)

seqio.TaskRegistry.add(
    "taskless_super_glue_boolq_v102",
    **_classification("boolq", BOOL_LABELS, _ACCURACY, prefixed=False),
)
register_labels("taskless_super_glue_boolq_v102", BOOL_LABELS)
seqio.TaskRegistry.add(
    "super_glue_boolq_v102_t5format",
    **_classification("boolq", BOOL_LABELS, _ACCURACY, prefixed=True),
)
register_labels("super_glue_boolq_v102_t5format", BOOL_LABELS)

seqio.TaskRegistry.add(
    "taskless_super_glue_cb_v102", **_classification("cb", CB_LABELS, _CB_METRICS, prefixed=False)
)
register_labels("taskless_super_glue_cb_v102", CB_LABELS)
seqio.TaskRegistry.add(
    "super_glue_cb_v102_t5format", **_classification("cb", CB_LABELS, _CB_METRICS, prefixed=True)
)
register_labels("super_glue_cb_v102_t5format", CB_LABELS)

seqio.TaskRegistry.add(
    "taskless_super_glue_copa_v102",
    **_classification("copa", COPA_LABELS, _ACCURACY, prefixed=False),
)
register_labels("taskless_super_glue_copa_v102", COPA_LABELS)
seqio.TaskRegistry.add(
    "super_glue_copa_v102_t5format",
    **_classification("copa", COPA_LABELS, _ACCURACY, prefixed=True),
)
register_labels("super_glue_copa_v102_t5format", COPA_LABELS)

seqio.TaskRegistry.add("taskless_super_glue_multirc_v102", **_multirc(prefixed=False))
register_labels("taskless_super_glue_multirc_v102", BOOL_LABELS)
seqio.TaskRegistry.add("super_glue_multirc_v102_t5format", **_multirc(prefixed=True))
register_labels("super_glue_multirc_v102_t5format", BOOL_LABELS)

seqio.TaskRegistry.add("taskless_super_glue_record_v102", **_record(prefixed=False))
register_labels("taskless_super_glue_record_v102", None)
seqio.TaskRegistry.add("super_glue_record_v102_t5format", **_record(prefixed=True))
register_labels("super_glue_record_v102_t5format", None)

seqio.TaskRegistry.add(
    "taskless_super_glue_rte_v102", **_classification("rte", RTE_LABELS, _ACCURACY, prefixed=False)
)
register_labels("taskless_super_glue_rte_v102", RTE_LABELS)
seqio.TaskRegistry.add(
    "super_glue_rte_v102_t5format", **_classification("rte", RTE_LABELS, _ACCURACY, prefixed=True)
)
register_labels("super_glue_rte_v102_t5format", RTE_LABELS)

seqio.TaskRegistry.add(
    "taskless_super_glue_wic_v102", **_classification("wic", BOOL_LABELS, _ACCURACY, prefixed=False)
)
register_labels("taskless_super_glue_wic_v102", BOOL_LABELS)
seqio.TaskRegistry.add(
    "super_glue_wic_v102_t5format", **_classification("wic", BOOL_LABELS, _ACCURACY, prefixed=True)
)
register_labels("super_glue_wic_v102_t5format", BOOL_LABELS)

seqio.TaskRegistry.add(
    "taskless_super_glue_wsc_v102_simple_train", **_wsc_simple(train=True, prefixed=False)
)
register_labels("taskless_super_glue_wsc_v102_simple_train", None)
seqio.TaskRegistry.add(
    "super_glue_wsc_v102_simple_train_t5format", **_wsc_simple(train=True, prefixed=True)
)
register_labels("super_glue_wsc_v102_simple_train_t5format", None)
seqio.TaskRegistry.add(
    "taskless_super_glue_wsc_v102_simple_eval", **_wsc_simple(train=False, prefixed=False)
)
register_labels("taskless_super_glue_wsc_v102_simple_eval", None)
seqio.TaskRegistry.add(
    "super_glue_wsc_v102_simple_eval_t5format", **_wsc_simple(train=False, prefixed=True)
)
register_labels("super_glue_wsc_v102_simple_eval_t5format", None)

_AXB = dict(benchmark="rte", splits=["test"], rename=_AXB_AS_RTE)
seqio.TaskRegistry.add(
    "taskless_super_glue_axb_v102",
    **_classification("axb", RTE_LABELS, (metrics.matthews_corrcoef,), prefixed=False, **_AXB),
)
register_labels("taskless_super_glue_axb_v102", RTE_LABELS)
seqio.TaskRegistry.add(
    "super_glue_axb_v102_t5format",
    **_classification("axb", RTE_LABELS, (metrics.matthews_corrcoef,), prefixed=True, **_AXB),
)
register_labels("super_glue_axb_v102_t5format", RTE_LABELS)

seqio.TaskRegistry.add(
    "taskless_super_glue_axg_v102",
    **_classification(
        "axg", RTE_LABELS, _ACCURACY, prefixed=False, benchmark="rte", splits=["test"]
    ),
)
register_labels("taskless_super_glue_axg_v102", RTE_LABELS)
seqio.TaskRegistry.add(
    "super_glue_axg_v102_t5format",
    **_classification(
        "axg", RTE_LABELS, _ACCURACY, prefixed=True, benchmark="rte", splits=["test"]
    ),
)
register_labels("super_glue_axg_v102_t5format", RTE_LABELS)
