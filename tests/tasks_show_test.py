"""Tests of `python -m tasks.show`."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest
import sentencepiece

import tasks.builtin as builtin
import tasks.mixtures  # noqa: F401  (registers builtin_equal_with_task_ids)
from tasks import show, vocabularies

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
    processor = sentencepiece.SentencePieceProcessor(model_file=vocabularies.TINY_SPM_PATH)
    assert ids[0] == processor.encode(inputs[0]) + [1]  # the tiny T5's pieces + EOS
    target_ids = [ast.literal_eval(m) for m in re.findall(r"targets \(ids, \d+\): (\[.*\])", out)]
    assert target_ids[0] == processor.encode(targets[0]) + [1]
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


# Imports tasks' dependencies, times `import tasks` alone, then runs `python -m tasks.show` as the
# interpreter's -m flag does (runpy), in a fresh interpreter: one subprocess for both checks.
_SHOW_SCRIPT = """
import runpy, sys, time
import numpy, seqio, tensorflow
start = time.perf_counter()
import tasks
print(f"IMPORT_SECONDS {time.perf_counter() - start} TASKS {len(seqio.TaskRegistry.names())}",
      file=sys.stderr)
sys.argv = ["tasks.show", "builtin_keyword", "--split", "validation", "-n", "2"]
runpy.run_module("tasks.show", run_name="__main__", alter_sys=True)
"""


def test_fresh_import_registers_fast_and_tasks_show_runs_as_main():
    done = subprocess.run(
        [sys.executable, "-c", _SHOW_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, count = re.search(r"IMPORT_SECONDS (\S+) TASKS (\d+)", done.stderr).groups()
    assert float(seconds) < 5.0  # registering every task, on top of TensorFlow's own import
    assert int(count) > 400  # GLUE, SuperGLUE, QA, sentence, built-in tasks and their variants
    inputs, _ = builtin.generate_examples("keyword", "validation", "")
    assert re.findall(r"inputs \(text\): '(.*)'", done.stdout) == list(inputs[:2])
    assert done.stdout.count("example ") == 2
