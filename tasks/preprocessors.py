"""GLUE and SuperGLUE records cast to text-to-text `inputs`/`targets` strings, as T5 casts them.

The texts follow T5's `glue`, `stsb`, `record` and `wsc_simple` preprocessors: feature values
are joined with their names (`sentence1: ... sentence2: ...`). Lester et al. (2021) omit T5's
leading task name (`rte`, `wsc:`, ...); every cast here takes `prefix`: None (the default, no task
name) or the task name to put first, which gives T5's exact strings.

Records that cannot be cast are dropped, never raised on: an empty or blank text field, a label
outside the label set (GLUE/SuperGLUE test splits carry label -1), a ReCoRD query without answers,
a WSC pronoun that is not where its index says. Each dropped record is counted, per TFDS source and
reason, in a process-wide counter read with `dropped_counts()` (keys like `"glue/rte:no_label"`);
the first drop of each key is also logged with absl. The counter is fed from inside tf.data through
`tf.py_function`, so it counts every pass over a dataset (two epochs count twice).

Every function here maps a `tf.data.Dataset` of TFDS records to a dataset of examples with string
`inputs` and `targets` (plus the ids that metrics group by), usable as a seqio preprocessor.
"""

import collections
import threading
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf
from absl import logging

AUTOTUNE = tf.data.AUTOTUNE

UNKNOWN_TARGET = "<unk>"

# Reasons a record is dropped (the part of a `dropped_counts()` key after the colon).
EMPTY_TEXT = "empty_text"
NO_LABEL = "no_label"
LABEL_OUT_OF_RANGE = "label_out_of_range"
NO_ANSWERS = "no_answers"
PRONOUN_NOT_FOUND = "pronoun_not_found"

_DROPPED: collections.Counter = collections.Counter()
_DROPPED_LOCK = threading.Lock()


def dropped_counts() -> dict[str, int]:
    """Returns how many records each source dropped and why, since start or the last reset.

    Returns:
      `{"<tfds source>:<reason>": count}`, e.g. `{"glue/rte:no_label": 3000}`.
    """
    with _DROPPED_LOCK:
        return dict(_DROPPED)


def reset_dropped_counts() -> None:
    """Sets every dropped-record count back to zero."""
    with _DROPPED_LOCK:
        _DROPPED.clear()


def _count_drop(key: tf.Tensor) -> bool:
    """Adds one to the count of `key` (a scalar string tensor); returns False for `filter`."""
    name = key.numpy().decode("utf-8")
    with _DROPPED_LOCK:
        _DROPPED[name] += 1
        first = _DROPPED[name] == 1
    if first:
        logging.warning(
            "Dropping records that cannot be cast to text: %s (counted in "
            "tasks.preprocessors.dropped_counts()).",
            name,
        )
    return False


def _keep(source: str, reason: tf.Tensor) -> tf.Tensor:
    """Filter predicate: True when `reason` is empty, else counts the drop and returns False."""

    def drop() -> tf.Tensor:
        key = tf.strings.join([source, ":", reason])
        kept = tf.py_function(_count_drop, [key], tf.bool)
        return tf.reshape(kept, [])

    return tf.cond(tf.equal(reason, ""), lambda: tf.constant(True), drop)


def _first_reason(checks: Sequence[tuple[tf.Tensor, str]]) -> tf.Tensor:
    """The reason of the first failed check (a bool tensor that is True when bad), or ""."""
    reason = tf.constant("")
    for bad, name in reversed(checks):
        reason = tf.where(bad, tf.constant(name), reason)
    return reason


def _cast_and_filter(dataset: tf.data.Dataset, source: str, cast_fn) -> tf.data.Dataset:
    """Maps `cast_fn(ex) -> (example, reason)` and drops (and counts) records with a reason."""
    dataset = dataset.map(cast_fn, num_parallel_calls=AUTOTUNE)
    dataset = dataset.filter(lambda ex, reason: _keep(source, reason))
    return dataset.map(lambda ex, reason: ex, num_parallel_calls=AUTOTUNE)


def _is_blank(text: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.strip(text), "")


def _join_fields(
    x: Mapping[str, tf.Tensor],
    feature_names: Sequence[str],
    prefix: str | None,
    rename: Mapping[str, str] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Joins `"[prefix ]name1: value1 name2: value2"`; returns it and "any field is blank"."""
    rename = rename or {}
    parts = [] if prefix is None else [prefix]
    blanks = []
    for name in feature_names:
        value = x[rename.get(name, name)]
        parts += [f"{name}:", value]
        blanks.append(_is_blank(value))
    return tf.strings.join(parts, separator=" "), tf.reduce_any(tf.stack(blanks))


def _label_string(
    label: tf.Tensor, label_names: Sequence[str], keep_unlabeled: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns (label string, no label?, label outside the label set?)."""
    label = tf.cast(label, tf.int32)
    names = tf.constant(list(label_names))
    unlabeled = tf.equal(label, -1)
    out_of_range = tf.logical_and(
        tf.logical_not(unlabeled), tf.logical_or(label < 0, label >= len(label_names))
    )
    safe = tf.clip_by_value(label, 0, len(label_names) - 1)
    target = tf.where(unlabeled, tf.constant(UNKNOWN_TARGET), tf.gather(names, safe))
    no_label = tf.logical_and(unlabeled, tf.constant(not keep_unlabeled))
    return target, no_label, out_of_range


def glue_text(
    dataset: tf.data.Dataset,
    *,
    source: str,
    label_names: Sequence[str],
    feature_names: Sequence[str] | None = None,
    prefix: str | None = None,
    rename: Mapping[str, str] | None = None,
    keep_unlabeled: bool = False,
) -> tf.data.Dataset:
    """Casts classification records as T5's `glue` preprocessor, optionally without the task name.

    `{"sentence1": "A", "sentence2": "B", "label": 0, "idx": 7}` with
    `label_names=("entailment", "not_entailment")` becomes
    `{"inputs": "sentence1: A sentence2: B", "targets": "entailment", "idx": 7}`
    (`"rte sentence1: A sentence2: B"` with `prefix="rte"`).

    Args:
      dataset: TFDS records with text features, an int `label` and an `idx`.
      source: the TFDS name (`"glue/rte"`), the key of dropped-record counts.
      label_names: the label strings, indexed by class id.
      feature_names: text features in output order; default all but `label`/`idx`, sorted by name.
      prefix: the task name T5 puts first, or None to leave it out.
      rename: output feature name -> record key, for records named differently (SuperGLUE AX-b
        is cast as RTE: `{"premise": "sentence1", "hypothesis": "sentence2"}`).
      keep_unlabeled: keep label -1 records with target `"<unk>"` (T5's test-set behaviour, for
        test-only prediction tasks) instead of dropping them.

    Returns:
      Examples `{"inputs", "targets", "idx"}` of strings and the record's id.
    """

    read_as = {key: name for name, key in (rename or {}).items()}

    def cast(x):
        names = feature_names
        if names is None:  # T5: every feature but label and idx, sorted by (output) name.
            names = sorted(read_as.get(k, k) for k in x if k not in ("label", "idx"))
        inputs, blank = _join_fields(x, names, prefix, rename)
        target, no_label, out_of_range = _label_string(x["label"], label_names, keep_unlabeled)
        reason = _first_reason(
            [(blank, EMPTY_TEXT), (no_label, NO_LABEL), (out_of_range, LABEL_OUT_OF_RANGE)]
        )
        return {"inputs": inputs, "targets": target, "idx": x["idx"]}, reason

    return _cast_and_filter(dataset, source, cast)


def stsb_text(
    dataset: tf.data.Dataset, *, source: str = "glue/stsb", prefix: str | None = None
) -> tf.data.Dataset:
    """Casts STS-B as T5: the score rounded to a multiple of 0.2 and written `"%.1f"`.

    `{"sentence1": "A", "sentence2": "B", "label": 2.35}` becomes
    `{"inputs": "sentence1: A sentence2: B", "targets": "2.4"}` (`round(2.35 * 5) / 5`, with
    TensorFlow's round-half-to-even, as T5). Labels outside [0, 5] (test labels are -1) are dropped.

    Args:
      dataset: TFDS `glue/stsb` records.
      source: the key of dropped-record counts.
      prefix: the task name T5 puts first (`"stsb"`), or None.

    Returns:
      Examples `{"inputs", "targets", "idx"}`.
    """

    def cast(x):
        inputs, blank = _join_fields(x, ("sentence1", "sentence2"), prefix)
        label = tf.cast(x["label"], tf.float32)
        target = tf.strings.as_string(tf.round(label * 5) / 5, precision=1)
        no_label = tf.equal(label, -1.0)
        out_of_range = tf.logical_and(
            tf.logical_not(no_label), tf.logical_or(label < 0.0, label > 5.0)
        )
        reason = _first_reason(
            [(blank, EMPTY_TEXT), (no_label, NO_LABEL), (out_of_range, LABEL_OUT_OF_RANGE)]
        )
        return {"inputs": inputs, "targets": target, "idx": x["idx"]}, reason

    return _cast_and_filter(dataset, source, cast)


def multirc_text(
    dataset: tf.data.Dataset, *, source: str = "super_glue/multirc", prefix: str | None = None
) -> tf.data.Dataset:
    """Casts MultiRC as T5: `question: Q answer: A paragraph: P`, HTML markup removed.

    `<br>` becomes a space and `<b>`/`</b>` are deleted; the target is `"False"`/`"True"`. The
    paragraph, question and answer ids are kept as `idx/paragraph`, `idx/question`, `idx/answer`
    (exact match is computed per question).

    Args:
      dataset: TFDS `super_glue/multirc` records.
      source: the key of dropped-record counts.
      prefix: the task name T5 puts first (`"multirc"`), or None.

    Returns:
      Examples `{"inputs", "targets", "idx/paragraph", "idx/question", "idx/answer"}`.
    """

    def cast(x):
        inputs, blank = _join_fields(x, ("question", "answer", "paragraph"), prefix)
        inputs = tf.strings.regex_replace(inputs, "<br>", " ")
        inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
        target, no_label, out_of_range = _label_string(x["label"], ("False", "True"), False)
        reason = _first_reason(
            [(blank, EMPTY_TEXT), (no_label, NO_LABEL), (out_of_range, LABEL_OUT_OF_RANGE)]
        )
        example = {"inputs": inputs, "targets": target}
        for key in ("paragraph", "question", "answer"):
            example[f"idx/{key}"] = x["idx"][key]
        return example, reason

    return _cast_and_filter(dataset, source, cast)


def record_text(
    dataset: tf.data.Dataset, *, source: str = "super_glue/record", prefix: str | None = None
) -> tf.data.Dataset:
    """Casts ReCoRD as T5: one example per correct answer, all answers kept for the metric.

    `{"query": "A @placeholder bird.", "entities": ["penguin", "potato"], "answers":
    ["penguin"], "passage": "P.\\n@highlight\\nQ"}` becomes
    `{"inputs": "query: A @placeholder bird. entities: penguin, potato passage: P. Q",
    "targets": "penguin", "answers": ["penguin"], "idx/passage", "idx/query"}`. In the passage,
    `"\\n@highlight\\n"` becomes `" "` after sentence punctuation and `". "` otherwise.
    Queries without answers (the test split) are dropped.

    Args:
      dataset: TFDS `super_glue/record` records.
      source: the key of dropped-record counts.
      prefix: the task name T5 puts first (`"record"`), or None.

    Returns:
      Examples `{"inputs", "targets", "answers", "idx/passage", "idx/query"}`.
    """

    def cast(x):
        passage = tf.strings.regex_replace(x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
        passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
        parts = [] if prefix is None else [prefix]
        parts += ["query:", x["query"], "entities:"]
        parts += [tf.strings.reduce_join(x["entities"], separator=", "), "passage:", passage]
        inputs = tf.strings.join(parts, separator=" ")
        num_answers = tf.size(x["answers"])
        blank = tf.logical_or(_is_blank(x["passage"]), _is_blank(x["query"]))
        reason = _first_reason([(blank, EMPTY_TEXT), (tf.equal(num_answers, 0), NO_ANSWERS)])
        n = tf.maximum(num_answers, 1)
        answers = tf.cond(
            num_answers > 0, lambda: x["answers"], lambda: tf.constant([UNKNOWN_TARGET])
        )
        per_answer = {
            "inputs": tf.fill([n], inputs),  # [A]
            "targets": answers,  # [A]
            "answers": tf.tile(x["answers"][tf.newaxis], [n, 1]),  # [A, A']
            "idx/passage": tf.fill([n], x["idx"]["passage"]),  # [A]
            "idx/query": tf.fill([n], x["idx"]["query"]),  # [A]
        }
        return per_answer, reason

    return _cast_and_filter(dataset, source, cast).unbatch()


def _mark_pronoun(
    text: tf.Tensor, pronoun: tf.Tensor, index: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Puts `*` around the pronoun at word `index` of `text`; returns (text, found?).

    The word at `index` (then `index + 1`, then `index - 1`, which repairs the off-by-one spans T5
    special-cases) must be the pronoun, or the pronoun followed only by punctuation, which is split
    off with a space (`him,"` becomes `*him* ,"`).
    """
    words = tf.strings.split(text, sep=" ")  # [W]
    num_words = tf.size(words)
    candidates = tf.stack([index, index + 1, index - 1])  # [3]
    in_range = tf.logical_and(candidates >= 0, candidates < num_words)
    safe = tf.clip_by_value(candidates, 0, tf.maximum(num_words - 1, 0))
    cand_words = tf.gather(words, safe)  # [3]
    word_len = tf.strings.length(cand_words)
    pron_len = tf.minimum(tf.fill([3], tf.strings.length(pronoun)), word_len)
    heads = tf.strings.substr(cand_words, tf.zeros_like(pron_len), pron_len)
    rests = tf.strings.substr(cand_words, pron_len, word_len - pron_len)
    matched = in_range & tf.equal(heads, pronoun) & tf.strings.regex_full_match(rests, r"[^\w]*")
    matched = matched & tf.logical_not(_is_blank(pronoun))
    first = tf.argmax(tf.cast(matched, tf.int32), output_type=tf.int32)
    position, rest = safe[first], rests[first]
    suffix = tf.where(tf.equal(rest, ""), tf.constant(""), tf.strings.join([" ", rest]))
    marked = tf.strings.join(["*", pronoun, "*", suffix])
    new_words = tf.concat([words[:position], [marked], words[position + 1 :]], axis=0)  # [W]
    return tf.strings.reduce_join(new_words, separator=" "), tf.reduce_any(matched)


def wsc_simple_text(
    dataset: tf.data.Dataset,
    *,
    correct_referent_only: bool,
    source: str = "super_glue/wsc.fixed",
    prefix: str | None = None,
) -> tf.data.Dataset:
    """Casts WSC as T5's `wsc_simple`: the model writes the referent of the marked pronoun.

    `{"text": "Mitchell asked Tom if he could lend some money.", "span1_text": "Tom",
    "span2_text": "he", "span2_index": 4, "label": 1}` becomes
    `{"inputs": "Mitchell asked Tom if *he* could lend some money.", "targets": "Tom",
    "label": 1}` (`"wsc: Mitchell ..."` with `prefix="wsc:"`). The target is the candidate
    referent whether or not it is right; `label` says whether it is.

    Args:
      dataset: TFDS `super_glue/wsc.fixed` records.
      correct_referent_only: keep only records whose candidate is the right referent (for
        training: a generated referent can only be taught from right ones). Those left out are
        not counted as dropped.
      source: the key of dropped-record counts.
      prefix: the text T5 puts first (`"wsc:"`), or None.

    Returns:
      Examples `{"inputs", "targets", "label", "idx"}`.
    """
    if correct_referent_only:
        dataset = dataset.filter(lambda x: tf.equal(x["label"], 1))

    def cast(x):
        marked, found = _mark_pronoun(x["text"], x["span2_text"], x["span2_index"])
        inputs = marked if prefix is None else tf.strings.join([prefix, marked], separator=" ")
        blank = tf.logical_or(_is_blank(x["text"]), _is_blank(x["span1_text"]))
        label = tf.cast(x["label"], tf.int32)
        reason = _first_reason(
            [
                (blank, EMPTY_TEXT),
                (tf.equal(label, -1), NO_LABEL),
                (tf.logical_or(label < -1, label > 1), LABEL_OUT_OF_RANGE),
                (tf.logical_not(found), PRONOUN_NOT_FOUND),
            ]
        )
        example = {"inputs": inputs, "targets": x["span1_text"], "label": label, "idx": x["idx"]}
        return example, reason

    return _cast_and_filter(dataset, source, cast)


def tokenize_steps() -> list:
    """What every task runs after its text cast: tokenize, a cache point, EOS after trimming."""
    return [
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ]
