"""Tests of `python -m tasks.show`."""

import ast
import re

import pytest

import tasks.builtin as builtin
import tasks.mixtures  # noqa: F401  (registers builtin_equal_with_task_ids)
from tasks import show


def test_prints_text_and_byte_ids_of_the_first_examples(capsys):
    status = show.main(
        ["builtin_sentiment_prefixed", "--split", "test", "-n", "2", "--feature_lengths",
         "inputs=128,targets=4"]
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    inputs, targets = builtin.generate_examples("sentiment", "test", "sentiment: ")
    texts = re.findall(r"inputs \(text\): '(.*)'", out)
    assert texts == list(inputs[:2])
    ids = [ast.literal_eval(m) for m in re.findall(r"inputs \(ids, \d+\): (\[.*\])", out)]
    assert ids[0] == [b + 3 for b in inputs[0].encode()] + [1]  # ByteVocabulary + EOS
    # Targets are trimmed to 4 tokens, EOS included.
    target_ids = [ast.literal_eval(m) for m in re.findall(r"targets \(ids, 4\): (\[.*\])", out)]
    assert target_ids[0] == [b + 3 for b in targets[0][:3].encode()] + [1]
    assert out.count("example ") == 2


def test_mixture_shows_task_ids(capsys):
    assert show.main(["builtin_equal_with_task_ids", "-n", "3"]) == 0
    assert len(re.findall(r"task_ids: [012]\n", capsys.readouterr().out)) == 3


def test_unknown_task_lists_close_names(capsys):
    assert show.main(["builtin_sentimnt"]) == 2
    err = capsys.readouterr().err
    assert "builtin_sentimnt" in err and "builtin_sentiment" in err


def test_bad_feature_lengths_are_rejected():
    assert show.parse_feature_lengths("inputs=128, targets=16") == {"inputs": 128, "targets": 16}
    with pytest.raises(ValueError, match="name=length"):
        show.parse_feature_lengths("inputs:128")
    with pytest.raises(SystemExit):
        show.main(["builtin_topic", "--feature_lengths", "inputs=0"])
