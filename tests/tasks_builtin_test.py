"""Tests of the built-in learnable tasks: generation rules, balance, determinism, tokenisation."""

import collections

import numpy as np
import pytest
import sentencepiece
import seqio

import tasks.builtin as builtin
from tasks import vocabularies
from tasks.labels import label_strings

LENGTHS = {"inputs": 128, "targets": 16}


def _examples(name: str, split: str, n: int | None = None) -> list[dict]:
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(LENGTHS, split=split, shuffle=False, try_in_mem_cache=False)
    return list((ds.take(n) if n else ds).as_numpy_iterator())


@pytest.mark.parametrize("kind", ["sentiment", "topic", "keyword"])
def test_classes_are_exactly_balanced_so_a_constant_answer_scores_chance(kind):
    labels = builtin.LABELS[kind]
    for split, size in builtin.SPLIT_SIZES.items():
        _, targets = builtin.generate_examples(kind, split)
        assert len(targets) == size
        counts = collections.Counter(targets)
        assert set(counts) == set(labels)
        assert set(counts.values()) == {size // len(labels)}
        task = seqio.get_mixture_or_task(f"builtin_{kind}")
        ids = [task.postprocess_fn(t, is_target=True) for t in targets]
        for label in labels:  # a model ignoring its input is at chance
            prediction = task.postprocess_fn(label.encode(), is_target=False)
            (metric_fn,) = task.metric_fns
            score = metric_fn(ids, [prediction] * size)["accuracy"]
            assert score == pytest.approx(100.0 / len(labels))


def test_sentiment_label_is_the_strict_majority_polarity():
    inputs, targets = builtin.generate_examples("sentiment", "validation")
    for text, label in zip(inputs, targets):
        words = text.split()
        assert 6 <= len(words) <= 12
        positive = sum(w in builtin.POSITIVE_WORDS for w in words)
        negative = sum(w in builtin.NEGATIVE_WORDS for w in words)
        assert positive != negative
        assert label == ("positive" if positive > negative else "negative")
        assert all(
            w in builtin.FILLER_WORDS + builtin.POSITIVE_WORDS + builtin.NEGATIVE_WORDS
            for w in words
        )


def test_topic_keywords_all_belong_to_the_label_topic():
    inputs, targets = builtin.generate_examples("topic", "test")
    for text, label in zip(inputs, targets):
        topics = {t for w in text.split() for t, kw in builtin.TOPIC_WORDS.items() if w in kw}
        assert topics == {label}


def test_keyword_label_is_presence_of_the_only_word_with_z():
    inputs, targets = builtin.generate_examples("keyword", "train")
    for text, label in zip(inputs[:2000], targets[:2000]):
        assert label == ("yes" if "zzz" in text.split() else "no")
        assert text.replace("zzz", "").count("z") == 0


def test_generation_is_deterministic_and_splits_differ():
    builtin.generate_examples.cache_clear()
    first = builtin.generate_examples("topic", "validation")
    builtin.generate_examples.cache_clear()
    assert builtin.generate_examples("topic", "validation") == first
    assert builtin.generate_examples("topic", "test")[0] != first[0]
    # Disjoint seeds: the validation inputs are not a prefix of the train inputs.
    assert builtin.generate_examples("topic", "train")[0][:500] != first[0]
    with pytest.raises(ValueError, match="splits"):
        builtin.generate_examples("topic", "dev")


@pytest.mark.parametrize("name", ["builtin_sentiment", "builtin_topic", "builtin_keyword"])
def test_registered_tasks_yield_sentencepiece_tokens_and_short_inputs(name):
    processor = sentencepiece.SentencePieceProcessor(model_file=vocabularies.TINY_SPM_PATH)
    prefixed = _examples(f"{name}_prefixed", "validation")
    plain = _examples(name, "validation")
    labels = label_strings(name)
    assert label_strings(f"{name}_prefixed") == labels
    assert len(plain) == 500
    for ex, ex_prefixed in zip(plain, prefixed):
        text = ex["inputs_pretokenized"]
        assert len(text) <= 100
        # The tiny T5's SentencePiece ids, EOS = 1 appended; every label is one piece.
        assert ex["inputs"].tolist() == processor.encode(text.decode()) + [1]
        assert ex["targets"].tolist() == processor.encode(ex["targets_pretokenized"].decode()) + [1]
        assert len(ex["targets"]) == 2
        assert ex["targets_pretokenized"].decode() in labels
        prefix = {"builtin_sentiment": b"sentiment: ", "builtin_topic": b"topic: "}.get(
            name, b"keyword: "
        )
        assert ex_prefixed["inputs_pretokenized"] == prefix + text
    assert np.all([len(e["inputs_pretokenized"]) <= 100 for e in prefixed])


def test_predictions_are_scored_as_t5_labels_with_invalid_ones_counted():
    task = seqio.get_mixture_or_task("builtin_keyword")
    targets = [task.postprocess_fn(t, is_target=True) for t in [b"yes", b"no", b"no", b"yes"]]
    predictions = [task.postprocess_fn(p) for p in [b"yes", b"no", b"maybe", b"no"]]
    (metric_fn,) = task.metric_fns
    assert metric_fn(targets, predictions) == {"accuracy": 50.0, "invalid_predictions": 1}
