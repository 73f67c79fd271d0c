"""Extractive QA tasks in T5's SQuAD format: SQuAD v1.1 and the MRQA 2019 datasets.

Format (T5's `squad` preprocessor): punctuation is padded with spaces in the question, context and
answers, then

    inputs:  "question: <question> context: <context>"
    targets: the first answer (training target); `answers` keeps every reference for evaluation.

T5's SQuAD format has no task-name word (the `question:`/`context:` field names are its only
markers), so the unprefixed tasks are exactly T5's `squad_v010_allanswers` format. The `_prefixed`
variants put the task-name word `squad` in front (`"squad question: ... context: ..."`), the way
T5's GLUE formats start with the benchmark name. MRQA tasks use the same word in their `_prefixed`
variants, so a prompt trained on either SQuAD variant is evaluated zero-shot on MRQA (Lester et
al., 2021, Sec. 5) with exactly the format it was trained on.

MRQA (TFDS `mrqa`, version 1.0.0): the in-domain datasets have `train`/`validation` splits; the
out-of-domain ones ship only MRQA's development data, which TFDS calls `test` and which these tasks
expose as both `validation` and `test`. The MRQA training target is the first detected answer span
(the text as it occurs in the context, as in the original prompt-tuning code), falling back to the
first reference answer.

Metrics: SQuAD EM and F1 ×100 (`tasks.qa_metrics.squad`), max over reference answers.
"""

import functools

import seqio
import tensorflow as tf

from tasks import preprocessors, qa_metrics
from tasks.labels import register_labels
from tasks.vocabularies import t5_output_features

SQUAD_TFDS_NAME = "squad/v1.1:3.0.0"
MRQA_TFDS_VERSION = "1.0.0"
PREFIX_WORD = "squad"
MRQA_IN_DOMAIN = ("squad", "news_qa", "trivia_qa", "search_qa", "hotpot_qa", "natural_questions")
MRQA_OUT_OF_DOMAIN = (
    "bio_asq", "drop", "duo_rc", "race", "relation_extraction", "textbook_qa",
)  # fmt: skip


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
    """Puts spaces around ASCII punctuation and collapses whitespace (T5's `_pad_punctuation`)."""
    text = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
    return tf.strings.regex_replace(text, r"\s+", " ")


def _join(parts: list) -> tf.Tensor:
    """Joins with single spaces (T5's `_string_join`)."""
    return tf.strings.regex_replace(tf.strings.join(parts, separator=" "), r"\s+", " ")


def _qa_example(
    question: tf.Tensor, context: tf.Tensor, target: tf.Tensor, answers: tf.Tensor, prefix: str
) -> dict[str, tf.Tensor]:
    """Builds the text-to-text example from raw (unpadded) fields."""
    question, context = pad_punctuation(question), pad_punctuation(context)
    fields = ["question:", question, "context:", context]
    return {
        "inputs": _join([prefix, *fields] if prefix else fields),
        "targets": pad_punctuation(target),
        "question": question,
        "context": context,
        "answers": pad_punctuation(answers),
    }


def squad_preprocessor(dataset: tf.data.Dataset, prefix: str = "") -> tf.data.Dataset:
    """TFDS `squad` examples → `{inputs, targets, id, question, context, answers}` strings.

    Args:
      dataset: examples with `id`, `question`, `context`, `answers/text` `[A]`.
      prefix: a word put before `question:` (empty for T5's format).

    Returns:
      The text-to-text dataset; `targets` is the first answer, `answers` `[A]` all of them.
    """

    def convert(example):
        answers = example["answers"]["text"]
        converted = _qa_example(
            example["question"], example["context"], answers[0], answers, prefix
        )
        return {**converted, "id": example["id"]}

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def mrqa_preprocessor(dataset: tf.data.Dataset, prefix: str = "") -> tf.data.Dataset:
    """TFDS `mrqa` examples → the same format as `squad_preprocessor`.

    Args:
      dataset: examples with `qid`, `question`, `context`, `answers` `[A]` and
        `detected_answers/text` `[D]`.
      prefix: a word put before `question:` (empty for T5's format).

    Returns:
      The text-to-text dataset; `targets` is the first detected span (else the first answer).
    """

    def convert(example):
        answers = example["answers"]
        candidates = tf.concat([example["detected_answers"]["text"], answers, [""]], axis=0)
        converted = _qa_example(
            example["question"], example["context"], candidates[0], answers, prefix
        )
        return {**converted, "id": example["qid"]}

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def qa_postprocessor(output, example=None, is_target: bool = False):
    """seqio postprocessor: every reference answer for targets, the decoded text otherwise."""
    if is_target:
        return [tf.compat.as_text(answer) for answer in example["answers"]]
    return output


def _register(name: str, source: seqio.DataSource, preprocessor, prefix: str) -> None:
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(preprocessor, prefix=prefix),
            *preprocessors.tokenize_steps(),
        ],
        output_features=t5_output_features(),
        postprocess_fn=qa_postprocessor,
        metric_fns=[qa_metrics.squad],
    )
    register_labels(name, None)


def _mrqa_source(config: str) -> seqio.TfdsDataSource:
    splits = (
        ("train", "validation")
        if config in MRQA_IN_DOMAIN
        else {
            "validation": "test",
            "test": "test",
        }
    )
    return seqio.TfdsDataSource(f"mrqa/{config}:{MRQA_TFDS_VERSION}", splits=splits)


_squad_source = seqio.TfdsDataSource(SQUAD_TFDS_NAME, splits=("train", "validation"))
_register("squad_v010_allanswers", _squad_source, squad_preprocessor, "")
_register("squad_v010_allanswers_prefixed", _squad_source, squad_preprocessor, PREFIX_WORD)

for _config in MRQA_IN_DOMAIN + MRQA_OUT_OF_DOMAIN:
    _register(f"mrqa_{_config}_v001", _mrqa_source(_config), mrqa_preprocessor, "")
    _register(
        f"mrqa_{_config}_v001_prefixed", _mrqa_source(_config), mrqa_preprocessor, PREFIX_WORD
    )

MRQA_IN_DOMAIN_TASKS = tuple(f"mrqa_{config}_v001" for config in MRQA_IN_DOMAIN)
MRQA_OUT_OF_DOMAIN_TASKS = tuple(f"mrqa_{config}_v001" for config in MRQA_OUT_OF_DOMAIN)
