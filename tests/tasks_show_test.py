"""Tests of `python -m tasks.show`."""

import ast
import json
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


# In a fresh interpreter: imports tasks' dependencies, counts what `import tasks` then does, and
# runs `python -m tasks.show` as the interpreter's -m flag does (runpy), counting the same.
# Importing must only register: no example generated (builtin's lru_cache), no tf.data dataset,
# TFDS builder, SentencePiece model or file read, no socket, and none of the heavy packages that
# registering does not need. Showing examples does all but the last, so the counters are seen to
# count.
_SHOW_SCRIPT = """
import collections, json, runpy, sys
import numpy, sentencepiece, seqio, tensorflow as tf, tensorflow_datasets as tfds

counts = collections.Counter()

def count(owner, name, key):
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[key] += 1
        return original(*args, **kwargs)

    setattr(owner, name, counted)

count(tf.data.Dataset, "__init__", "datasets")
count(tfds.core.DatasetBuilder, "__init__", "tfds_builders")
count(sentencepiece.SentencePieceProcessor, "LoadFromSerializedProto", "spm_loads")
count(tf.io.gfile.GFile, "__init__", "gfile_opens")

def audit(event, args):
    if event == "open" and not str(args[0]).endswith((".py", ".pyc")):
        counts["file_opens"] += 1
    elif event.startswith("socket."):
        counts["sockets"] += 1

sys.addaudithook(audit)

def report(phase, **extra):
    counts["generated_splits"] = tasks.builtin.generate_examples.cache_info().misses
    print("COUNTS", json.dumps({"phase": phase, **counts, **extra}), file=sys.stderr)
    counts.clear()

before = {name.split(".")[0] for name in sys.modules}
import tasks
new = sorted({name.split(".")[0] for name in sys.modules} - before)
report("import", tasks=len(seqio.TaskRegistry.names()), new_modules=new)
sys.argv = ["tasks.show", "builtin_keyword", "--split", "validation", "-n", "2"]
try:
    runpy.run_module("tasks.show", run_name="__main__", alter_sys=True)
finally:
    report("show")
"""


def test_fresh_import_only_registers_and_tasks_show_runs_as_main():
    done = subprocess.run(
        [sys.executable, "-c", _SHOW_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = [json.loads(m) for m in re.findall(r"COUNTS (\{.*\})", done.stderr)]
    imported, shown = (next(c for c in found if c["phase"] == p) for p in ("import", "show"))
    assert int(imported.pop("tasks")) > 400  # GLUE, SuperGLUE, QA, sentence, built-in + variants
    heavy = {"prompt_tuning", "torch", "transformers", "t5", "mesh_tensorflow"}
    assert not heavy & set(imported.pop("new_modules"))
    assert imported == {"phase": "import", "generated_splits": 0}  # every other counter is 0
    for key in ("datasets", "spm_loads", "gfile_opens", "generated_splits"):
        assert shown.get(key, 0) > 0, (key, shown)  # the counters count
    inputs, _ = builtin.generate_examples("keyword", "validation", "")
    assert re.findall(r"inputs \(text\): '(.*)'", done.stdout) == list(inputs[:2])
    assert done.stdout.count("example ") == 2
