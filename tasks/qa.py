"""Extractive QA tasks in T5's SQuAD format: SQuAD v1.1 and the MRQA 2019 datasets.

Format (T5's `squad` preprocessor, byte for byte): punctuation is padded with spaces in the
question, context and answers, then

    inputs:  "question: <question> context: <context>"
    targets: the first answer (training target); `answers` keeps every reference for evaluation.

T5's SQuAD format has no task word (`question:`/`context:` are field names), so its task-less
variant `taskless_squad_v010_allanswers` and its T5-format variant `squad_v010_allanswers_t5format`
(`tasks.naming`) read the same text, T5's `squad_v010_allanswers`. The MRQA tasks (T5 has none, so
they keep plain names) use the same format, as in the original prompt-tuning code, so a prompt
trained on SQuAD is evaluated zero-shot on MRQA (Lester et al., 2021, Sec. 5) with exactly the
format it was trained on.

MRQA (TFDS `mrqa`, version 1.0.0): the in-domain datasets have `train`/`validation` splits; the
out-of-domain ones ship only MRQA's development data, which TFDS calls `test` and which these tasks
expose as both `validation` and `test`. The MRQA training target is the first detected answer span
(the text as it occurs in the context, as in the original prompt-tuning code), falling back to the
first reference answer.

Metrics: SQuAD EM and F1 ×100 (`tasks.qa_metrics.squad`), max over reference answers.
"""

import seqio
import tensorflow as tf

from tasks import preprocessors, qa_metrics
from tasks.labels import register_labels
from tasks.vocabularies import t5_output_features

SQUAD_TFDS_NAME = "squad/v1.1:3.0.0"
MRQA_TFDS_VERSION = "1.0.0"
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
    question: tf.Tensor, context: tf.Tensor, target: tf.Tensor, answers: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Builds the text-to-text example from raw (unpadded) fields."""
    question, context = pad_punctuation(question), pad_punctuation(context)
    return {
        "inputs": _join(["question:", question, "context:", context]),
        "targets": pad_punctuation(target),
        "question": question,
        "context": context,
        "answers": pad_punctuation(answers),
    }


def squad_preprocessor(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """TFDS `squad` examples → `{inputs, targets, id, question, context, answers}` strings.

    Args:
      dataset: examples with `id`, `question`, `context`, `answers/text` `[A]`.

    Returns:
      The text-to-text dataset; `targets` is the first answer, `answers` `[A]` all of them.
    """

    def convert(example):
        answers = example["answers"]["text"]
        converted = _qa_example(example["question"], example["context"], answers[0], answers)
        return {**converted, "id": example["id"]}

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def mrqa_preprocessor(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """TFDS `mrqa` examples → the same format as `squad_preprocessor`.

    Args:
      dataset: examples with `qid`, `question`, `context`, `answers` `[A]` and
        `detected_answers/text` `[D]`.

    Returns:
      The text-to-text dataset; `targets` is the first detected span (else the first answer).
    """

    def convert(example):
        answers = example["answers"]
        candidates = tf.concat([example["detected_answers"]["text"], answers, [""]], axis=0)
        converted = _qa_example(example["question"], example["context"], candidates[0], answers)
        return {**converted, "id": example["qid"]}

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def qa_postprocessor(output, example=None, is_target: bool = False):
    """seqio postprocessor: every reference answer for targets, the decoded text otherwise."""
    if is_target:
        return [tf.compat.as_text(answer) for answer in example["answers"]]
    return output


def _register(name: str, source: seqio.DataSource, preprocessor) -> None:
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[preprocessor, *preprocessors.tokenize_steps()],
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
_register("taskless_squad_v010_allanswers", _squad_source, squad_preprocessor)
_register("squad_v010_allanswers_t5format", _squad_source, squad_preprocessor)

for _config in MRQA_IN_DOMAIN + MRQA_OUT_OF_DOMAIN:
    _register(f"mrqa_{_config}_v001", _mrqa_source(_config), mrqa_preprocessor)

MRQA_IN_DOMAIN_TASKS = tuple(f"mrqa_{config}_v001" for config in MRQA_IN_DOMAIN)
MRQA_OUT_OF_DOMAIN_TASKS = tuple(f"mrqa_{config}_v001" for config in MRQA_OUT_OF_DOMAIN)
