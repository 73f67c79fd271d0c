"""Tests of tools/benchmark_decode.py: its JSON, its workers, and ours against transformers.

No timing assertions. Both systems decode the same weights (the `weights` worker writes them in
both formats), so their outputs are compared: in float32 our greedy tokens and rank choices must
equal transformers' `generate` and forward pass on the PEFT model (an independent
implementation). Compiled PEFT modes are slow to compile and run only in the benchmark itself;
here the choice of the fastest mode is tested on hand-made records.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning.perf import costs, decode_benchmark, decode_workers, workers
from prompt_tuning.t5 import hf_format
from tools import benchmark_decode

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH, NEW_TOKENS = 4, 5


@pytest.fixture(scope="module")
def report():
    command = [sys.executable, "tools/benchmark_decode.py", "--cases", "tiny", "--batch", "4"]
    command += ["--steps", "1", "--warmup", "0", "--new-tokens", str(NEW_TOKENS)]
    command += ["--input-length", "8", "--prompt-length", "5", "--dtypes", "float32"]
    command += ["--peft-modes", "eager"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout), done.stderr


def test_both_systems_decode_exactly_the_asked_tokens_and_agree_with_transformers(report):
    data, stderr = report
    runs = {(r["system"], r["task"]): r for r in data["runs"]}
    assert set(runs) == {(s, t) for s in ("ours", "peft") for t in ("greedy", "rank")}
    for system in ("ours", "peft"):
        greedy = runs[system, "greedy"]
        assert greedy["new_tokens"] == [NEW_TOKENS] * BATCH
        assert greedy["new_tokens_min_max"] == [NEW_TOKENS, NEW_TOKENS]
        assert len(greedy["times_s"]) == 1 and greedy["examples_per_s"] > 0
    assert runs["ours", "greedy"]["imported"] == ["jax"]  # no seqio, TensorFlow, gin or torch
    assert runs["peft", "rank"]["mode"] == "eager" and runs["peft", "rank"]["missing_keys"] == []
    agreement = {a["task"]: a for a in data["summary"]["agreement"]}
    assert agreement["greedy"]["token_equality"] >= 0.99
    assert agreement["rank"]["choice_agreement"] == 1.0
    assert agreement["rank"]["score_max_abs_diff"] < 1e-3
    rows = data["summary"]["comparisons"]
    assert {(r["task"], r["peft_fastest_mode"]) for r in rows} == {
        ("greedy", "eager"),
        ("rank", "eager"),
    }
    assert set(data["summary"]["goals"]) == {"greedy tiny:4 float32", "rank tiny:4 float32"}
    assert "| greedy | tiny:4 | float32 |" in stderr and "GFLOP/batch (ours GFLOP/s)" in stderr
    # Our programs' matmul work per batch: the FLOP models that perf_costs_test checks against
    # the dots XLA compiles, for this run's shapes (input 8 + prompt 5; 2 labels of 3 tokens).
    config = workers.model_config("tiny", 0.0)
    gflop = {r["task"]: r["gflop"] for r in rows}
    greedy = costs.greedy_flops(config, BATCH, 8, 5, NEW_TOKENS)["total"]
    assert gflop == {
        "greedy": greedy / 1e9,
        "rank": costs.score_flops(config, 4, 8, 5, 2, 3)["total"] / 1e9,
    }
    assert all(r["ours_gflop_per_s"] == pytest.approx(r["gflop"] / r["ours_s"]) for r in rows)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny"
    decode_workers.run_weights({"size": "tiny", "prompt_length": 5, "seed": 0, "path": str(path)})
    return path


def test_weights_zero_the_eos_logit_in_both_formats(weights):
    with np.load(weights / decode_workers.OURS_FILE) as ours:
        kernel = ours["decoder/logits_dense/kernel"]  # [H, V]
        assert ours["encoder/prompt/prompt"].shape == (5, 32)
    with np.load(weights / decode_workers.HF_FILE) as hf:
        head = hf["lm_head.weight"]  # [V, H]
    assert not kernel[:, 1].any() and not head[1].any()
    np.testing.assert_array_equal(kernel.T, head)


def test_bfloat16_modes_decode_exactly_the_asked_tokens(weights):
    config = workers.model_config("tiny", 0.0)
    spec = {"size": "tiny", "prompt_length": 5, "seed": 0, "weights": str(weights)}
    spec |= {"batch": BATCH, "input_length": 8, "new_tokens": NEW_TOKENS, "num_labels": 2}
    spec |= {"label_length": 3, "task": "greedy", "dtype": "bfloat16", "device": "cpu"}
    spec |= {"warmup": 0, "steps": 1, "hf_config": hf_format.config_to_hf(config)}
    ours = decode_workers.run_jax_decode(spec)
    assert np.asarray(ours["tokens"]).shape == (BATCH, NEW_TOKENS)
    for mode in ("autocast", "cast"):
        theirs = decode_workers.run_peft_decode(dict(spec, mode=mode))
        assert theirs["new_tokens"] == [NEW_TOKENS] * BATCH
        assert np.asarray(theirs["tokens"]).shape == (BATCH, NEW_TOKENS)


def _run(mode, dtype, seconds, task="rank", rss=1.0):
    system = "ours" if mode == "ours" else "peft"
    return {"system": system, "mode": mode, "task": task, "size": "small", "batch": 32} | {
        "dtype": dtype,
        "batch_s_median": seconds,
        "cpu_s_per_batch_median": 2 * seconds,
        "peak_rss_gib": rss,
        "gflop_per_batch": 10.0,
    }


def test_comparisons_take_the_fastest_peft_mode_of_the_same_precision():
    runs = [
        _run("ours", "bfloat16", 0.5),
        _run("autocast", "bfloat16", 1.5),
        _run("cast", "bfloat16", 1.2, rss=2.0),
        _run("compile-autocast", "bfloat16", 1.0, rss=4.0),
        _run("compile-autocast", "bfloat16", 3.0, rss=4.0),  # round 2: median 2.0
        _run("ours", "float32", 2.0),
        _run("eager", "float32", 3.0),
        _run("compile", "float32", 0.9),  # faster than ours, but another precision's
    ]
    rows = {r["dtype"]: r for r in decode_benchmark.comparisons(runs)}
    bf16, f32 = rows["bfloat16"], rows["float32"]
    assert bf16["peft_fastest_mode"] == "cast" and bf16["speedup"] == pytest.approx(1.2 / 0.5)
    assert bf16["peft_modes_s"] == {"autocast": 1.5, "cast": 1.2, "compile-autocast": 2.0}
    assert bf16["memory_ratio"] == pytest.approx(0.5)  # against the chosen mode's RSS
    assert bf16["cpu_speedup"] == pytest.approx(2.4 / 1.0)
    assert bf16["gflop"] == 10.0 and bf16["ours_gflop_per_s"] == pytest.approx(10.0 / 0.5)
    assert f32["peft_fastest_mode"] == "compile" and f32["speedup"] == pytest.approx(0.45)
    goals = decode_benchmark.goals(list(rows.values()))
    assert goals == {"rank small:32 bfloat16": True, "rank small:32 float32": False}


def test_generate_runs_no_compiled_mode():
    args = decode_benchmark.DecodeSettings()
    assert decode_benchmark.peft_modes_for(args, "greedy", "bfloat16") == ["autocast", "cast"]
    assert decode_benchmark.peft_modes_for(args, "rank", "float32") == ["eager", "compile"]


def test_importing_the_predictor_imports_no_seqio_tensorflow_or_gin():
    code = "import sys, prompt_tuning.predict.predictor as p; "
    code += "print([m for m in ('seqio', 'tensorflow', 'gin', 'torch') if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_cli_refuses_a_label_without_room_for_eos():
    with pytest.raises(SystemExit):
        benchmark_decode.parse(["--label-length", "1"])
