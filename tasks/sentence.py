"""Single-sentence classification tasks of IDPG: MPQA, Subj, CR and MR, from user-provided files.

These datasets are not in TFDS. Put each split in a file

    $PROMPT_TUNING_DATA_DIR/<task>/{train,validation,test}.tsv   (or .csv)

(default data dir `~/.cache/prompt_tuning/data`; `<task>` is `mpqa`, `subj`, `cr` or `mr`), one
example a row: `sentence<TAB>label` for `.tsv`, `sentence,label` (quoted as needed) for `.csv`;
a row `label,sentence` (label first, as in LM-BFF's release) is read too. A header row whose
fields are not labels (e.g. `sentence<TAB>label`) is skipped. The label is the label string or
its integer id:

- MPQA, CR, MR: `negative` (0) / `positive` (1).
- Subj: `subjective` (0) / `objective` (1) (LM-BFF's ids).

Files are read when a dataset is built, not at import; a missing or malformed file raises an
error naming the expected path and format. Format (T5's SST-2 style): inputs
`"sentence: <text>"`, or `"<task> sentence: <text>"` for the `_prefixed` variants; targets the
label string. Few-shot variants `<task>_fewshot_k<K>_seed<S>` for K in {100, 500, 1000} and S in
0..2 follow IDPG (Sec. 4.4; see `tasks.splits`).
"""

import csv
import functools
import os
import pathlib

import seqio
import tensorflow as tf

from tasks import metrics, postprocessors, preprocessors, splits
from tasks.labels import register_labels
from tasks.vocabularies import t5_output_features

DATA_DIR_ENV = "PROMPT_TUNING_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/prompt_tuning/data"
SPLITS = ("train", "validation", "test")
# Label strings in integer-id order.
LABELS = {
    "mpqa": ("negative", "positive"),
    "subj": ("subjective", "objective"),
    "cr": ("negative", "positive"),
    "mr": ("negative", "positive"),
}
FEW_SHOT_KS = (100, 500, 1000)  # IDPG, Sec. 4.4


def data_dir() -> pathlib.Path:
    """`$PROMPT_TUNING_DATA_DIR`, or `~/.cache/prompt_tuning/data`."""
    return pathlib.Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def split_path(task: str, split: str) -> pathlib.Path:
    """The file of one split: `<data dir>/<task>/<split>.tsv`, or `.csv` when only that exists.

    Raises:
      FileNotFoundError: neither file exists; the message gives the expected path and format.
    """
    folder = data_dir() / task
    for suffix in (".tsv", ".csv"):
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    raise FileNotFoundError(
        f"No {split!r} data for the {task!r} task: expected {folder / split}.tsv (one "
        f"'sentence<TAB>label' row per example) or {split}.csv ('sentence,label'), with label one "
        f"of {LABELS[task]} or its id 0..{len(LABELS[task]) - 1}. Set ${DATA_DIR_ENV} to the "
        "folder that holds the task folders."
    )


def _label_string(field: str, labels: tuple[str, ...]) -> str | None:
    """The label string a field names (label or integer id), or None when it names none."""
    field = field.strip()
    if field in labels:
        return field
    if field.isdigit() and int(field) < len(labels):
        return labels[int(field)]
    return None


def read_examples(task: str, split: str) -> tuple[list[str], list[str]]:
    """Reads one split's file.

    Args:
      task: `mpqa`, `subj`, `cr` or `mr`.
      split: `train`, `validation` or `test`.

    Returns:
      `(sentences, label_strings)`.

    Raises:
      FileNotFoundError: the split's file is missing.
      ValueError: a row is not `sentence, label` (or `label, sentence`) with a known label.
    """
    path = split_path(task, split)
    labels = LABELS[task]
    delimiter = "\t" if path.suffix == ".tsv" else ","
    expected = (
        f"one example a row: sentence and label separated by {delimiter!r}, label in {labels} or "
        f"0..{len(labels) - 1}"
    )
    sentences, targets = [], []
    line = 0
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
                if not row:
                    continue
                last = _label_string(row[-1], labels) if len(row) == 2 else None
                first = _label_string(row[0], labels) if len(row) == 2 else None
                if last is not None:
                    sentences.append(row[0])
                    targets.append(last)
                elif first is not None:
                    sentences.append(row[1])
                    targets.append(first)
                elif line > 1 or len(row) != 2:
                    raise ValueError(f"{path}, line {line}: expected {expected}; got {row!r}.")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): the {task!r} task "
            f"reads a {path.suffix} file, {expected}."
        ) from None
    except csv.Error as error:
        raise ValueError(f"{path}, line {line + 1}: not {path.suffix} text ({error}).") from None
    if not sentences:
        raise ValueError(f"{path} holds no examples; the {task!r} task expects {expected}.")
    return sentences, targets


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, task: str):
    del shuffle_files, seed
    sentences, targets = read_examples(task, split)
    return tf.data.Dataset.from_tensor_slices(
        {
            "sentence": tf.constant(sentences, tf.string),
            "label": tf.constant(targets, tf.string),
        }
    )


def to_text(dataset: tf.data.Dataset, prefix: str = "") -> tf.data.Dataset:
    """`{sentence, label}` → `{inputs: "[prefix ]sentence: <sentence>", targets: <label>}`."""
    lead = f"{prefix} sentence:" if prefix else "sentence:"
    return dataset.map(
        lambda ex: {
            "inputs": tf.strings.join([lead, ex["sentence"]], separator=" "),
            "targets": ex["label"],
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _register(name: str, task: str, prefix: str) -> None:
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(functools.partial(_dataset_fn, task=task), splits=SPLITS),
        preprocessors=[
            functools.partial(to_text, prefix=prefix),
            *preprocessors.tokenize_steps(),
        ],
        output_features=t5_output_features(),
        postprocess_fn=functools.partial(
            postprocessors.string_label_to_class_id, label_classes=LABELS[task]
        ),
        metric_fns=[metrics.accuracy],
    )
    register_labels(name, LABELS[task])


_register("mpqa", "mpqa", "")
_register("mpqa_prefixed", "mpqa", "mpqa")
_register("subj", "subj", "")
_register("subj_prefixed", "subj", "subj")
_register("cr", "cr", "")
_register("cr_prefixed", "cr", "cr")
_register("mr", "mr", "")
_register("mr_prefixed", "mr", "mr")

for _task in LABELS:
    for _seed in splits.FEW_SHOT_SEEDS:
        for _k in FEW_SHOT_KS:
            splits.register_few_shot_task(_task, k=_k, seed=_seed)
