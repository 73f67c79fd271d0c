"""Tests of tools/compare_methods.py on a tiny random T5: outputs, table statistics, counts, PNGs.

One small comparison (2 methods x 1 task x 2 seeds, a learning-rate and a length sweep, a few
steps) runs once per module; the checks recompute its tables from results.json, the trainable
parameter counts from the papers' formulas, and validate the PNG files byte by byte. A last test
checks the tool's compiled training run against the trainer's step, one call per batch, and its
rank-classification accuracy against the library's `Evaluator`.
"""

import functools
import json
import pathlib
import re
import statistics
import struct
import zlib

import jax
import numpy as np
import pytest

from prompt_tuning.predict import evaluation
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.train import optimizers, step
from tools import _compare_lib as lib
from tools import compare_methods

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_GIN = str(ROOT / "gin_configs" / "models" / "t5_1_1_tiny.gin")
H = t5_config.tiny(vocab_size=512).emb_dim  # the model gin's width (32)
TASK, SEEDS, LENGTH, SWEPT_LENGTH, EVAL_EXAMPLES = "builtin_keyword", (0, 1), 4, 6, 32
DPT_BOTTLENECK = 10  # gin_configs/prompts/dpt.gin


@pytest.fixture(name="run", scope="module")
def _run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    argv = [
        "--model_gin", MODEL_GIN, "--output", str(tmp / "out"),
        "--docs", str(tmp / "docs" / "results.md"),
        "--methods", "pt_random_uniform", "dpt", "--tasks", TASK, "--seeds", *map(str, SEEDS),
        "--steps", "6", "--batch_size", "8", "--eval_examples", str(EVAL_EXAMPLES),
        "--pool_size", "64", "--length", str(LENGTH), "--lrs", "0.1", "1",
        "--lr_sweep_tasks", TASK, "--lengths", str(LENGTH), str(SWEPT_LENGTH),
        "--length_sweep_methods", "pt_random_uniform", "--length_sweep_tasks", TASK,
    ]  # fmt: skip
    assert compare_methods.main(argv) == 0
    out = tmp / "out"
    results = json.loads((out / "results.json").read_text())
    return dict(argv=argv, out=out, docs=tmp / "docs", results=results, rows=results["runs"])


def _table(text, heading):
    """The rows (lists of cells) of the first Markdown table after `heading` (None: the first)."""
    start = 0 if heading is None else text.index(heading)
    rows, seen = [], False
    for line in text[start:].splitlines():
        if line.startswith("|"):
            seen = True
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif seen:
            break
    assert rows, heading
    return rows[2:]  # skip the header and the |---| line


def _rows(run, **match):
    return [r for r in run["rows"] if all(r[k] == v for k, v in match.items())]


def _expected_cell(accuracies):
    values = [100 * a for a in accuracies]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {std:.1f}"


def test_every_run_is_recorded_with_its_fields(run):
    rows = run["rows"]
    keys = {"method", "task", "seed", "lr", "length", "accuracy", "params", "steps", "seconds"}
    assert all(keys <= set(r) for r in rows)
    # main: 2 methods x 2 seeds at lr 0.3; lr sweep: 2 methods x 2 lrs x 2 seeds;
    # length sweep: P=6 x 2 seeds (P=4 at lr 0.3 is the main run, not repeated).
    assert len(rows) == 4 + 8 + 2
    assert len({(r["method"], r["task"], r["seed"], r["lr"], r["length"]) for r in rows}) == 14
    for r in rows:
        assert r["steps"] == 6 and r["task"] == TASK and r["seed"] in SEEDS
        # Accuracy is a count of the 32 validation examples.
        assert 0 <= r["accuracy"] <= 1 and float(r["accuracy"] * EVAL_EXAMPLES).is_integer()


def test_parameter_counts_follow_the_papers_formulas(run):
    for r in run["rows"]:
        if r["method"] == "pt_random_uniform":  # Lester et al.: P x H
            assert r["params"] == r["length"] * H
        else:  # DPT: A [H, b] and B [b, P] -> (P + H) b
            assert r["method"] == "dpt"
            assert r["params"] == (r["length"] + H) * DPT_BOTTLENECK
    assert {r["length"] for r in run["rows"]} == {LENGTH, SWEPT_LENGTH}


def test_main_table_matches_results_json(run):
    text = (run["out"] / "table.md").read_text()
    table = _table(text, None)
    assert [row[0] for row in table] == ["pt_random_uniform", "dpt"]
    for name, params, cell, average in table:
        chosen = _rows(run, method=name, lr=0.3, length=LENGTH)
        assert sorted(r["seed"] for r in chosen) == list(SEEDS)
        assert cell == _expected_cell([r["accuracy"] for r in chosen])
        assert params == f"{chosen[0]['params']:,}"
        assert average == f"{100 * statistics.fmean(r['accuracy'] for r in chosen):.1f}"
    assert "rank classification" in text


def test_sweep_tables_match_results_json(run):
    text = (run["out"] / "table.md").read_text()
    for name, _, *cells in _table(text, "## Learning rate"):
        for lr, cell in zip((0.1, 1.0), cells):
            chosen = [r["accuracy"] for r in _rows(run, method=name, lr=lr)]
            assert len(chosen) == 2 and cell == _expected_cell(chosen)
    length_rows = _table(text, "## Prompt length")
    assert [(row[0], row[1]) for row in length_rows] == [
        ("pt_random_uniform", str(LENGTH)),
        ("pt_random_uniform", str(SWEPT_LENGTH)),
    ]
    for name, length, params, cell in length_rows:
        chosen = _rows(run, method=name, lr=0.3, length=int(length))
        assert params == f"{int(length) * H:,}" and cell == _expected_cell(
            [r["accuracy"] for r in chosen]
        )


def _check_png(path):
    """Signature, then every chunk's length and CRC-32, IHDR first with a positive size, IEND."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, names = 8, []
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        name, body = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", raw[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(name + body) == crc, (path, name)
        names.append(name)
        if name == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert width > 100 and height > 100
        pos += 12 + length
    assert names[0] == b"IHDR" and names[-1] == b"IEND" and b"IDAT" in names


def test_plots_are_valid_png_files(run):
    for name in ("lr_sweep.png", "length_sweep.png"):
        _check_png(run["out"] / name)
        _check_png(run["docs"] / "results" / name)


def test_docs_page_links_the_plots_and_gives_the_command(run):
    page = (run["docs"] / "results.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
        assert (run["docs"] / link).is_file(), link
    assert "results/lr_sweep.png" in page and "results/length_sweep.png" in page
    assert "python tools/compare_methods.py --model_gin" in page
    assert " ".join(run["argv"][-4:]) in page
    assert "Machine:" in page and "Total time:" in page
    assert run["results"]["setup"]["command"].startswith("python tools/compare_methods.py")


def test_rank_accuracy_agrees_with_the_library_evaluator(tmp_path):
    tasks, lengths = lib.load_tasks([TASK], 64, EVAL_EXAMPLES)
    frozen = lib.load_frozen(MODEL_GIN, str(tmp_path))
    method = lib.METHODS["full_finetune"]  # trains every weight: accuracy moves off chance
    runner = lib.MethodRunner(
        lambda labels: lib.build_module(frozen, method, None, labels),
        frozen,
        method.trainable_regex,
        lengths,
    )
    task = tasks[TASK]
    initial, batches = runner.initial(0, task.labels), lib.run_batches(task.train, 30, 16, 0)
    trained, losses = runner.train(initial, batches, 0, 1e-2)
    # The compiled run equals the trainer's step called 30 times (no dropout: DROPOUT_RATE 0).
    optimizer = optimizers.with_param_axes(
        optimizers.adafactor(learning_rate=1e-2), runner.model.param_logical_axes()
    )
    one_step = jax.jit(functools.partial(step.train_step, model=runner.model, optimizer=optimizer))
    state = step.init_state(optimizer, initial)
    for k in range(30):
        batch = {name: value[k] for name, value in batches.items()}
        state, metrics = one_step(state, runner.frozen, batch, jax.random.key(0))
        assert float(metrics["loss"]) == pytest.approx(float(losses[k]), rel=1e-4)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(trained)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    accuracy = runner.accuracy(trained, task)
    evaluator = evaluation.Evaluator(
        TASK, {"inputs": lengths[0], "targets": lengths[1]}, runner.model, 16,
        num_examples=EVAL_EXAMPLES,
    )  # fmt: skip
    params = optimizers.merge_params(trained, runner.frozen)
    choices = evaluator.rank_choices(params, TASK)
    assert accuracy == pytest.approx(float(np.mean(choices == task.gold)))
    assert accuracy > 0.6  # the trained model is better than chance (0.5)
