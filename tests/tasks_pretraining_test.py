"""The tiny T5's generated pretraining corpus: deterministic, prefixed families, correct targets."""

import collections
import itertools

import pytest

from tasks import builtin, pretraining

PREFIXES = {name: prefix for name, (prefix, _) in pretraining.FAMILIES.items() if prefix}


def _take(n: int, shard: int = 0) -> list[tuple[str, str, str]]:
    return list(itertools.islice(pretraining.examples(shard), n))


def test_stream_is_deterministic_per_shard_and_shards_differ():
    assert _take(200) == _take(200)
    assert _take(200, shard=1) != _take(200)


def test_family_shares_match_the_mixture():
    counts = collections.Counter(family for family, _, _ in _take(10_000))
    total = sum(share for _, share in pretraining.FAMILIES.values())
    for name, (_, share) in pretraining.FAMILIES.items():
        assert counts[name] / 10_000 == pytest.approx(share / total, abs=0.02), name


def test_prefixes_and_targets_follow_each_familys_rule():
    positive, negative = set(builtin.POSITIVE_WORDS), set(builtin.NEGATIVE_WORDS)
    for family, inputs, targets in _take(3000):
        prefix = PREFIXES.get(family, "")
        assert inputs.startswith(prefix)
        words = inputs[len(prefix) :].split()
        if family == "lm":
            assert not any(inputs.startswith(p) for p in PREFIXES.values())
            assert 1 <= len(targets.split()) <= 8
        elif family == "copy":
            assert targets == " ".join(words)
        elif family == "first":
            assert targets == words[0]
        elif family == "last":
            assert targets == words[-1]
        elif family == "count":
            assert targets == str(len(words))
        elif family == "sentiment":
            pos = sum(w in positive for w in words)
            neg = sum(w in negative for w in words)
            assert targets == ("positive" if pos > neg else "negative")
        elif family == "keyword":
            assert targets == ("yes" if builtin.KEYWORD_MARKER in words else "no")
        else:
            assert family == "topic"
            assert {w for w in words if w not in builtin.FILLER_WORDS} <= set(
                builtin.TOPIC_WORDS[targets]
            )


def test_built_in_families_use_streams_disjoint_from_the_built_in_splits():
    corpus = collections.defaultdict(list)
    for family, inputs, targets in _take(6000):
        if family in builtin.LABELS:
            corpus[family].append((inputs[len(PREFIXES[family]) :], targets))
    for family, pairs in corpus.items():
        for split in ("train", "validation", "test"):
            texts, labels = builtin.generate_examples(family, split)
            # The same generator fed the same stream would repeat the split's first examples.
            assert pairs[:50] != list(zip(texts[:50], labels[:50], strict=True))
            assert len(set(pairs[:200]) & set(zip(texts[:200], labels[:200], strict=True))) < 20
