"""Built-in learnable tasks: generated from a seed, no download, the tiny T5's vocabulary.

They exist for the demo, `tools/compare_methods.py`, smoke runs and tests. Their vocabulary is the
embedded tiny T5's SentencePiece model (`tasks.vocabularies.tiny_vocabulary`); that model was
pretrained on these families only *with* their prefixes (`tasks.pretraining`). Each is a text-to-
text classification task whose inputs are short (at most ~100 bytes) and whose classes are exactly
balanced, so a frozen model with no conditioning scores chance (1 / number of labels).

- `builtin_sentiment`: 6-12 words mixing neutral filler words with positive and negative words;
  the target is `positive` or `negative`, whichever kind of word is in the majority (never a tie).
- `builtin_topic`: 6-10 words, filler plus one to three keywords of one topic; the target is
  `sports`, `science`, `music` or `food`.
- `builtin_keyword`: 4-10 filler words; the target is `yes` when the marker word `zzz` is among
  them and `no` otherwise. `zzz` is a single vocabulary piece, so the label is one token's
  presence: a prompt learns it even on a randomly initialised frozen model.

Each also has a `_prefixed` variant whose inputs start with a text prefix that names the task
(`sentiment: `, `topic: `, `keyword: `). Splits: `train` (20,000), `validation` (500) and `test`
(500), generated with disjoint seeds. Few-shot variants (`tasks.splits`) are registered too:
`builtin_<name>_fewshot_k<K>_seed<S>` for K in `tasks.splits.FEW_SHOT_KS`, S in 0..2, and
`builtin_<name>_devsplit_seed0` (the structured-prompt dev/test protocol).
"""

import functools
from collections.abc import Callable

import numpy as np
import seqio
import tensorflow as tf

from tasks import metrics, postprocessors, preprocessors, splits, vocabularies
from tasks.labels import register_labels

SPLIT_SIZES = {"train": 20_000, "validation": 500, "test": 500}
# Disjoint generator streams per split: numpy seeds (task seed, split index).
_SPLIT_INDEX = {"train": 0, "validation": 1, "test": 2}

FILLER_WORDS = (
    "the", "a", "this", "that", "it", "was", "is", "and", "of", "on", "in", "my", "our", "very",
    "quite", "then", "today", "movie", "book", "day", "trip", "place", "thing", "we", "they",
    "had", "felt", "saw", "with", "for",
)  # fmt: skip
POSITIVE_WORDS = ("good", "great", "happy", "lovely", "superb", "nice", "fun", "best", "warm")
NEGATIVE_WORDS = ("bad", "awful", "sad", "boring", "poor", "worst", "ugly", "dull", "cold")
TOPIC_WORDS = {
    "sports": ("goal", "team", "match", "coach", "tennis", "soccer", "race", "score"),
    "science": ("atom", "theory", "physics", "cell", "laser", "orbit", "genome", "lab"),
    "music": ("guitar", "song", "melody", "piano", "album", "chord", "drums", "choir"),
    "food": ("pasta", "bread", "soup", "cheese", "apple", "curry", "salad", "cake"),
}
KEYWORD_MARKER = "zzz"

_TASK_SEEDS = {"sentiment": 11, "topic": 22, "keyword": 33}


def _sentiment_example(rng: np.random.Generator, index: int) -> tuple[str, str]:
    """One sentiment example; labels alternate with `index` so classes are balanced."""
    label = ("negative", "positive")[index % 2]
    majority = int(rng.integers(1, 4))  # 1..3 words of the labelled polarity
    minority = int(rng.integers(0, majority))  # strictly fewer: never a tie
    num_words = int(rng.integers(6, 13))
    num_filler = max(num_words - majority - minority, 1)
    major, minor = (
        (POSITIVE_WORDS, NEGATIVE_WORDS)
        if label == "positive"
        else (NEGATIVE_WORDS, POSITIVE_WORDS)
    )
    words = (
        list(rng.choice(major, majority))
        + list(rng.choice(minor, minority))
        + list(rng.choice(FILLER_WORDS, num_filler))
    )
    rng.shuffle(words)
    return " ".join(words), label


def _topic_example(rng: np.random.Generator, index: int) -> tuple[str, str]:
    """One topic example; labels cycle with `index` so the four classes are balanced."""
    labels = tuple(TOPIC_WORDS)
    label = labels[index % len(labels)]
    num_keywords = int(rng.integers(1, 4))
    num_filler = int(rng.integers(6, 11)) - num_keywords
    words = list(rng.choice(TOPIC_WORDS[label], num_keywords)) + list(
        rng.choice(FILLER_WORDS, num_filler)
    )
    rng.shuffle(words)
    return " ".join(words), label


def _keyword_example(rng: np.random.Generator, index: int) -> tuple[str, str]:
    """One keyword example: `yes` iff the marker word is present (alternating with `index`)."""
    label = ("no", "yes")[index % 2]
    words = list(rng.choice(FILLER_WORDS, int(rng.integers(4, 10))))
    if label == "yes":
        words.insert(int(rng.integers(0, len(words) + 1)), KEYWORD_MARKER)
    return " ".join(words), label


_GENERATORS: dict[str, Callable[[np.random.Generator, int], tuple[str, str]]] = {
    "sentiment": _sentiment_example,
    "topic": _topic_example,
    "keyword": _keyword_example,
}
LABELS = {
    "sentiment": ("negative", "positive"),
    "topic": tuple(TOPIC_WORDS),
    "keyword": ("no", "yes"),
}


def task_seed(kind: str) -> int:
    """The numpy seed of a built-in task family's generator streams."""
    return _TASK_SEEDS[kind]


def generate_one(kind: str, rng: np.random.Generator, index: int) -> tuple[str, str]:
    """One `(text, label)` example of a built-in family from `rng` (labels cycle with `index`)."""
    return _GENERATORS[kind](rng, index)


@functools.lru_cache(maxsize=32)
def generate_examples(kind: str, split: str, prefix: str = "") -> tuple[tuple[str, ...], ...]:
    """Generates the examples of one split of a built-in task, deterministically.

    Args:
      kind: `sentiment`, `topic` or `keyword`.
      split: `train`, `validation` or `test`.
      prefix: text put before every input (`""` for the unprefixed task).

    Returns:
      `(inputs, targets)`: two tuples of `SPLIT_SIZES[split]` strings.

    Raises:
      ValueError: unknown `kind` or `split`.
    """
    if kind not in _GENERATORS or split not in SPLIT_SIZES:
        raise ValueError(
            f"Unknown built-in task {kind!r} or split {split!r}: kinds are {sorted(_GENERATORS)}, "
            f"splits {sorted(SPLIT_SIZES)}."
        )
    rng = np.random.default_rng([_TASK_SEEDS[kind], _SPLIT_INDEX[split]])
    pairs = [_GENERATORS[kind](rng, i) for i in range(SPLIT_SIZES[split])]
    inputs = tuple(prefix + text for text, _ in pairs)
    targets = tuple(label for _, label in pairs)
    return inputs, targets


def _dataset_fn(
    split: str, shuffle_files: bool, seed: int | None = None, *, kind: str, prefix: str
) -> tf.data.Dataset:
    """`seqio.FunctionDataSource` function; order is fixed (seqio shuffles after preprocessing)."""
    del shuffle_files, seed
    inputs, targets = generate_examples(kind, split, prefix)
    return tf.data.Dataset.from_tensor_slices({"inputs": list(inputs), "targets": list(targets)})


def _register(name: str, kind: str, prefix: str) -> None:
    """Registers one built-in task and its label strings."""
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            functools.partial(_dataset_fn, kind=kind, prefix=prefix),
            splits=tuple(SPLIT_SIZES),
            num_input_examples=dict(SPLIT_SIZES),
        ),
        preprocessors=[
            *preprocessors.tokenize_steps(),
        ],
        output_features=vocabularies.tiny_output_features(),
        postprocess_fn=functools.partial(
            postprocessors.string_label_to_class_id, label_classes=LABELS[kind]
        ),
        metric_fns=[metrics.accuracy],
    )
    register_labels(name, LABELS[kind])


_register("builtin_sentiment", "sentiment", "")
_register("builtin_sentiment_prefixed", "sentiment", "sentiment: ")
_register("builtin_topic", "topic", "")
_register("builtin_topic_prefixed", "topic", "topic: ")
_register("builtin_keyword", "keyword", "")
_register("builtin_keyword_prefixed", "keyword", "keyword: ")

BUILTIN_TASKS = ("builtin_sentiment", "builtin_topic", "builtin_keyword")

splits.register_variants_of_registered(
    BUILTIN_TASKS, ks=splits.FEW_SHOT_KS, seeds=splits.FEW_SHOT_SEEDS
)
