"""GLUE tasks of T5 (`glue_<config>_v002`) under names of our own (`tasks.naming`).

Each task is registered twice: `taskless_glue_rte_v002` reads `sentence1: ... sentence2: ...`
(Lester et al. 2021 omit the task name) and `glue_rte_v002_t5format` reads T5's `rte sentence1:
... sentence2: ...`, byte for byte. Data: TFDS `glue/<config>:1.0.0`, the version of T5 and
Lester et al. (still a supported version of the TFDS 4.9 builder, whose default is 2.0.0). Label
strings are TFDS's, indexed by class id; records without a label (test splits) are dropped and
counted (`tasks.preprocessors`), except for the test-only diagnostic AX (`taskless_glue_ax_v002`),
which keeps them with target `<unk>` so that it can be predicted, as T5 does, and has no metrics.

MNLI (`taskless_glue_mnli_v002`) reads `validation` as `validation_matched` and `test` as
`test_matched` (the TFDS names are also kept); `taskless_glue_mnli_matched_v002` and
`taskless_glue_mnli_mismatched_v002` are the two evaluation sets on their own, as in T5.

Zero-shot transfer between QQP and MRPC (Lester et al. 2021, Table 2):
`taskless_glue_mrpc_as_qqp_v002` is MRPC with QQP's label strings (`not_duplicate`/`duplicate`),
`taskless_glue_qqp_as_mrpc_v002` is QQP with MRPC's (`not_equivalent`/`equivalent`); the inputs
keep their own field names. A prompt trained on `taskless_glue_qqp_v002` is evaluated on
`taskless_glue_mrpc_as_qqp_v002`, and the other way round.

Every task's metric function also returns `mean_of_metrics` (`tasks.metrics`).
"""

import functools
from collections.abc import Callable, Mapping, Sequence

import seqio

from tasks import metrics, postprocessors, preprocessors
from tasks.labels import register_labels
from tasks.vocabularies import t5_output_features

GLUE_VERSION = "1.0.0"
# Listed so a mixture knows the splits without the prepared dataset\'s metadata.
STANDARD_SPLITS = ("train", "validation", "test")

COLA_LABELS = ("unacceptable", "acceptable")
SST2_LABELS = ("negative", "positive")
MRPC_LABELS = ("not_equivalent", "equivalent")
QQP_LABELS = ("not_duplicate", "duplicate")
MNLI_LABELS = ("entailment", "neutral", "contradiction")
QNLI_LABELS = ("entailment", "not_entailment")
RTE_LABELS = ("entailment", "not_entailment")
WNLI_LABELS = ("not_entailment", "entailment")
# STS-B targets: scores rounded to multiples of 0.2, written "%.1f" ("0.0" ... "5.0").
STSB_LABELS = tuple(f"{i / 5:.1f}" for i in range(26))

# Text features in T5's order (sorted by name).
_FEATURES = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("hypothesis", "premise"),
    "mnli_matched": ("hypothesis", "premise"),
    "mnli_mismatched": ("hypothesis", "premise"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
    "ax": ("hypothesis", "premise"),
}

_MNLI_SPLITS = {
    "train": "train",
    "validation": "validation_matched",
    "test": "test_matched",
    "validation_matched": "validation_matched",
    "validation_mismatched": "validation_mismatched",
    "test_matched": "test_matched",
    "test_mismatched": "test_mismatched",
}

_OUTPUT_FEATURES = t5_output_features()

_ACCURACY = (metrics.accuracy,)
_F1_ACCURACY = (metrics.f1_score_with_invalid, metrics.accuracy)


def _metric_fns(fns: Sequence[Callable]) -> list:
    return [metrics.mean_of_metrics(*fns)] if fns else []


def text_classification(
    source_name: str,
    source: seqio.DataSource,
    labels: Sequence[str],
    feature_names: Sequence[str],
    metric_fns: Sequence[Callable],
    prefix: str | None,
    rename: Mapping[str, str] | None = None,
    keep_unlabeled: bool = False,
) -> dict:
    """seqio.TaskRegistry.add keyword arguments of a GLUE-style classification task.

    Args:
      source_name: names the TFDS source in the drop counts (`glue/rte`).
      source: where the records come from.
      labels: the label strings of the targets, indexed by class id.
      feature_names: the record's text fields, in T5's order.
      metric_fns: T5's metrics for the task, joined with `mean_of_metrics`.
      prefix: T5's task name at the start of the inputs, or None (prompt tuning's default).
      rename: output feature name -> record key.
      keep_unlabeled: keep label -1 records with target `<unk>`.

    Returns:
      `source`, `preprocessors`, `output_features`, `postprocess_fn` and `metric_fns`.
    """
    text = functools.partial(
        preprocessors.glue_text,
        source=source_name,
        label_names=tuple(labels),
        feature_names=feature_names,
        prefix=prefix,
        rename=rename,
        keep_unlabeled=keep_unlabeled,
    )
    return dict(
        source=source,
        preprocessors=[text, *preprocessors.tokenize_steps()],
        output_features=_OUTPUT_FEATURES,
        postprocess_fn=functools.partial(
            postprocessors.string_label_to_class_id, label_classes=tuple(labels)
        ),
        metric_fns=_metric_fns(metric_fns),
    )


def _classification(
    config: str,
    labels: Sequence[str],
    metric_fns: Sequence[Callable],
    *,
    prefixed: bool,
    benchmark: str | None = None,
    splits: Sequence[str] | Mapping[str, str] | None = None,
    keep_unlabeled: bool = False,
) -> dict:
    """`text_classification` of a TFDS `glue` config (prefix `benchmark`, default `config`)."""
    source = seqio.TfdsDataSource(
        tfds_name=f"glue/{config}:{GLUE_VERSION}", splits=splits or STANDARD_SPLITS
    )
    prefix = (benchmark or config) if prefixed else None
    return text_classification(
        f"glue/{config}", source, labels, _FEATURES[config], metric_fns, prefix,
        keep_unlabeled=keep_unlabeled,
    )  # fmt: skip


def _stsb(prefixed: bool) -> dict:
    """seqio.TaskRegistry.add keyword arguments of STS-B (targets "0.0" ... "5.0")."""
    text = functools.partial(preprocessors.stsb_text, prefix="stsb" if prefixed else None)
    return dict(
        source=seqio.TfdsDataSource(tfds_name=f"glue/stsb:{GLUE_VERSION}", splits=STANDARD_SPLITS),
        preprocessors=[text, *preprocessors.tokenize_steps()],
        output_features=_OUTPUT_FEATURES,
        # `label_classes`: the 26 target strings, read by rank classification (not by the parser).
        postprocess_fn=functools.partial(postprocessors.string_to_float, label_classes=STSB_LABELS),
        metric_fns=_metric_fns((metrics.pearson_corrcoef, metrics.spearman_corrcoef)),
    )


_MCC = (metrics.matthews_corrcoef,)

seqio.TaskRegistry.add(
    "taskless_glue_cola_v002", **_classification("cola", COLA_LABELS, _MCC, prefixed=False)
)
register_labels("taskless_glue_cola_v002", COLA_LABELS)
seqio.TaskRegistry.add(
    "glue_cola_v002_t5format", **_classification("cola", COLA_LABELS, _MCC, prefixed=True)
)
register_labels("glue_cola_v002_t5format", COLA_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_sst2_v002", **_classification("sst2", SST2_LABELS, _ACCURACY, prefixed=False)
)
register_labels("taskless_glue_sst2_v002", SST2_LABELS)
seqio.TaskRegistry.add(
    "glue_sst2_v002_t5format", **_classification("sst2", SST2_LABELS, _ACCURACY, prefixed=True)
)
register_labels("glue_sst2_v002_t5format", SST2_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_mrpc_v002", **_classification("mrpc", MRPC_LABELS, _F1_ACCURACY, prefixed=False)
)
register_labels("taskless_glue_mrpc_v002", MRPC_LABELS)
seqio.TaskRegistry.add(
    "glue_mrpc_v002_t5format", **_classification("mrpc", MRPC_LABELS, _F1_ACCURACY, prefixed=True)
)
register_labels("glue_mrpc_v002_t5format", MRPC_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_qqp_v002", **_classification("qqp", QQP_LABELS, _F1_ACCURACY, prefixed=False)
)
register_labels("taskless_glue_qqp_v002", QQP_LABELS)
seqio.TaskRegistry.add(
    "glue_qqp_v002_t5format", **_classification("qqp", QQP_LABELS, _F1_ACCURACY, prefixed=True)
)
register_labels("glue_qqp_v002_t5format", QQP_LABELS)

seqio.TaskRegistry.add("taskless_glue_stsb_v002", **_stsb(prefixed=False))
register_labels("taskless_glue_stsb_v002", STSB_LABELS)
seqio.TaskRegistry.add("glue_stsb_v002_t5format", **_stsb(prefixed=True))
register_labels("glue_stsb_v002_t5format", STSB_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_mnli_v002",
    **_classification("mnli", MNLI_LABELS, _ACCURACY, prefixed=False, splits=_MNLI_SPLITS),
)
register_labels("taskless_glue_mnli_v002", MNLI_LABELS)
seqio.TaskRegistry.add(
    "glue_mnli_v002_t5format",
    **_classification("mnli", MNLI_LABELS, _ACCURACY, prefixed=True, splits=_MNLI_SPLITS),
)
register_labels("glue_mnli_v002_t5format", MNLI_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_mnli_matched_v002",
    **_classification("mnli_matched", MNLI_LABELS, _ACCURACY, prefixed=False, benchmark="mnli"),
)
register_labels("taskless_glue_mnli_matched_v002", MNLI_LABELS)
seqio.TaskRegistry.add(
    "glue_mnli_matched_v002_t5format",
    **_classification("mnli_matched", MNLI_LABELS, _ACCURACY, prefixed=True, benchmark="mnli"),
)
register_labels("glue_mnli_matched_v002_t5format", MNLI_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_mnli_mismatched_v002",
    **_classification("mnli_mismatched", MNLI_LABELS, _ACCURACY, prefixed=False, benchmark="mnli"),
)
register_labels("taskless_glue_mnli_mismatched_v002", MNLI_LABELS)
seqio.TaskRegistry.add(
    "glue_mnli_mismatched_v002_t5format",
    **_classification("mnli_mismatched", MNLI_LABELS, _ACCURACY, prefixed=True, benchmark="mnli"),
)
register_labels("glue_mnli_mismatched_v002_t5format", MNLI_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_qnli_v002", **_classification("qnli", QNLI_LABELS, _ACCURACY, prefixed=False)
)
register_labels("taskless_glue_qnli_v002", QNLI_LABELS)
seqio.TaskRegistry.add(
    "glue_qnli_v002_t5format", **_classification("qnli", QNLI_LABELS, _ACCURACY, prefixed=True)
)
register_labels("glue_qnli_v002_t5format", QNLI_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_rte_v002", **_classification("rte", RTE_LABELS, _ACCURACY, prefixed=False)
)
register_labels("taskless_glue_rte_v002", RTE_LABELS)
seqio.TaskRegistry.add(
    "glue_rte_v002_t5format", **_classification("rte", RTE_LABELS, _ACCURACY, prefixed=True)
)
register_labels("glue_rte_v002_t5format", RTE_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_wnli_v002", **_classification("wnli", WNLI_LABELS, _ACCURACY, prefixed=False)
)
register_labels("taskless_glue_wnli_v002", WNLI_LABELS)
seqio.TaskRegistry.add(
    "glue_wnli_v002_t5format", **_classification("wnli", WNLI_LABELS, _ACCURACY, prefixed=True)
)
register_labels("glue_wnli_v002_t5format", WNLI_LABELS)

# The diagnostic set has only an unlabelled test split: predictions for the GLUE server, as T5.
seqio.TaskRegistry.add(
    "taskless_glue_ax_v002",
    **_classification(
        "ax",
        MNLI_LABELS,
        (),
        prefixed=False,
        benchmark="mnli",
        splits=["test"],
        keep_unlabeled=True,
    ),
)
register_labels("taskless_glue_ax_v002", MNLI_LABELS)
seqio.TaskRegistry.add(
    "glue_ax_v002_t5format",
    **_classification(
        "ax",
        MNLI_LABELS,
        (),
        prefixed=True,
        benchmark="mnli",
        splits=["test"],
        keep_unlabeled=True,
    ),
)
register_labels("glue_ax_v002_t5format", MNLI_LABELS)

# QQP <-> MRPC zero-shot transfer: each dataset written with the other's label strings.
seqio.TaskRegistry.add(
    "taskless_glue_mrpc_as_qqp_v002",
    **_classification("mrpc", QQP_LABELS, _F1_ACCURACY, prefixed=False),
)
register_labels("taskless_glue_mrpc_as_qqp_v002", QQP_LABELS)
seqio.TaskRegistry.add(
    "glue_mrpc_as_qqp_v002_t5format",
    **_classification("mrpc", QQP_LABELS, _F1_ACCURACY, prefixed=True),
)
register_labels("glue_mrpc_as_qqp_v002_t5format", QQP_LABELS)

seqio.TaskRegistry.add(
    "taskless_glue_qqp_as_mrpc_v002",
    **_classification("qqp", MRPC_LABELS, _F1_ACCURACY, prefixed=False),
)
register_labels("taskless_glue_qqp_as_mrpc_v002", MRPC_LABELS)
seqio.TaskRegistry.add(
    "glue_qqp_as_mrpc_v002_t5format",
    **_classification("qqp", MRPC_LABELS, _F1_ACCURACY, prefixed=True),
)
register_labels("glue_qqp_as_mrpc_v002_t5format", MRPC_LABELS)
