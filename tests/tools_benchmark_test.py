"""Tests of tools/benchmark_train.py: the CLI's JSON, its workers and its comparison arithmetic.

No timing assertions: timings depend on the machine and its load. The FLOP model and the
weight-gradient check are tested in perf_costs_test.py; here the benchmark must report the FLOPs
XLA compiled for the step it times (equal to the model's count) and no frozen-weight gradient.
"""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning.perf import train_benchmark, workers
from tools import benchmark_train

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    command = [sys.executable, "tools/benchmark_train.py", "--cases", "tiny:2", "--steps", "2"]
    command += ["--warmup", "1", "--matmul-size", "64", "--dtypes", "float32", "bfloat16"]
    command += ["--input-length", "24", "--prompt-length", "4", "--profile"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout), done.stderr


def test_cli_reports_both_precisions_with_the_compiled_flops(report):
    data, _ = report
    runs = {run["dtype"]: run for run in data["runs"]}
    assert set(runs) == {"float32", "bfloat16"}
    assert runs["bfloat16"]["frozen_dtype"] == "bfloat16"  # auto: frozen weights follow
    for run in runs.values():
        assert run["system"] == "ours" and run["size"] == "tiny" and run["batch"] == 2
        assert len(run["times_s"]) == 2 and all(np.isfinite(run["losses"]))
        # Random targets over 128 tokens: the cross-entropy starts near log(128) = 4.85.
        assert abs(run["losses"][0] - math.log(128)) < 1.5
        # The FLOPs XLA compiled for the timed step are exactly the model's count.
        assert run["dot_flops"] == run["flops_per_step"]
        assert run["weight_gradient_ops"] == 0
        # Our worker loads neither TensorFlow/seqio nor torch.
        assert run["imported"] == ["jax"]
        assert run["peak_rss_gib"] >= run["import_rss_gib"] > 0
    losses = [runs[d]["losses"][0] for d in ("float32", "bfloat16")]
    np.testing.assert_allclose(*losses, rtol=0.02)


def test_cli_profile_and_summary(report):
    data, stderr = report
    profile = data["runs"][0]["profile"]
    assert profile["categories"]["matmul (forward)"] > 0
    assert {"dropout (random bits, masks)", "layer norm"} <= set(profile["categories"])
    peaks = {(p["backend"], p["dtype"]) for p in data["summary"]["matmul_peaks_gflops"]}
    assert peaks == {("jax", "float32"), ("jax", "bfloat16")}
    rows = data["summary"]["comparisons"]
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    assert all("speedup" not in r for r in rows)  # no --vs-peft
    assert "| tiny b2 | bfloat16 |" in stderr
    assert "| category | ms per step (sum of ops) | share |" in stderr  # the profile, printed


def test_peft_worker_trains_a_prompt_of_the_same_width_under_autocast():
    from prompt_tuning.t5 import hf_format

    config = workers.model_config("tiny")
    spec = {"size": "tiny", "batch": 2, "input_length": 16, "prompt_length": 4}
    spec |= {"target_length": 4, "dropout": 0.1, "seed": 0, "warmup": 1, "steps": 2}
    spec |= {"hf_config": hf_format.config_to_hf(config)}
    for dtype in ("float32", "bfloat16"):
        result = workers.run_peft_step(dict(spec, dtype=dtype))
        # PEFT's prompt embedding is [P, H] of the same model: the only trainable tensor.
        assert result["trainable_params"] == 4 * config.emb_dim
        assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
        # Eager by default (torch.compile's mode is not run here: compiling the tiny model's
        # step takes over a minute on 2 cores), warm-up timed apart.
        assert result["peft_mode"] == "eager" and result["compile_s"] is None
        assert len(result["warmup_times_s"]) == 1 and "dynamo" not in result


def _run(system, dtype, step, cpu, rss, rnd=0, remat="none", fraction=0.5, **more):
    return {
        "system": system,
        "size": "small",
        "batch": 32,
        "dtype": dtype,
        "frozen_dtype": dtype if system == "ours" else None,
        "remat_layers": remat if system == "ours" else None,
        "peft_mode": f"{dtype}-eager" if system == "peft" else None,
        "round": rnd,
        "step_s_median": step,
        "cpu_s_per_step_median": cpu,
        "peak_rss_gib": rss,
        "fraction_of_matmul_peak": fraction,
        "load_avg_1m": [1.0, 1.2],
    } | more


def test_comparisons_pair_each_setting_with_peft_at_the_same_precision():
    runs = [
        _run("ours", "float32", 4.0, 8.0, 2.0),
        _run("peft", "float32", 6.0, 12.0, 5.0),
        _run("ours", "bfloat16", 2.0, 4.0, 1.0, fraction=0.8),
        _run("peft", "bfloat16", 4.0, 8.0, 4.0),
        _run("ours", "bfloat16", 2.5, 5.0, 0.8, remat="full"),
        _run("ours", "float32", 6.0, 8.0, 2.0, rnd=1),  # a second round: medians
        _run("peft", "float32", 8.0, 12.0, 5.0, rnd=1),
    ]
    rows = {(r["dtype"], r["remat_layers"]): r for r in train_benchmark.comparisons(runs)}
    f32 = rows[("float32", "none")]
    assert f32["rounds"] == 2 and f32["ours_step_s"] == 5.0 and f32["peft_step_s"] == 7.0
    assert f32["speedup"] == pytest.approx(7.0 / 5.0)
    assert f32["memory_ratio"] == pytest.approx(0.4)
    bf16 = rows[("bfloat16", "none")]
    assert bf16["speedup"] == 2.0 and bf16["memory_ratio"] == 0.25
    assert rows[("bfloat16", "full")]["speedup"] == pytest.approx(4.0 / 2.5)
    goals = train_benchmark.goals(list(rows.values()))
    # small b32: float32 must be 1.5x (1.4x fails), bfloat16 2.0x (2.0x holds); memory <= 0.5x
    # in both; the fraction-of-peak goal is base b8's alone.
    assert goals["small:32 float32 remat=none"] == {"speedup": False, "memory": True}
    assert goals["small:32 bfloat16 remat=none"] == {"speedup": True, "memory": True}
    assert goals["small:32 bfloat16 remat=full"] == {"speedup": False, "memory": True}
    table = train_benchmark.markdown(list(rows.values()))
    row = "| small b32 | bfloat16, remat full | 2.50 (5.00) | bfloat16-eager | 4.00 (8.00) |"
    assert row + " 1.60× |" in table


def test_comparisons_take_the_fastest_peft_mode_of_the_same_precision():
    def peft(dtype, mode, step, rss, rnd):
        return _run("peft", dtype, step, step, rss, rnd=rnd, peft_mode=f"{dtype}-{mode}")

    runs = [
        _run("ours", "bfloat16", 1.0, 2.0, 1.0),
        _run("ours", "bfloat16", 1.0, 2.0, 1.0, rnd=1),
        # Eager: medians 3.0; compiled: rounds 2.0 and 3.4, median 2.7 (its best round, 2.0,
        # beats eager's, but the median counts). Compiled's RSS is eager's plus 1 GiB.
        peft("bfloat16", "eager", 2.8, 3.0, 0),
        peft("bfloat16", "eager", 3.2, 3.0, 1),
        peft("bfloat16", "compiled", 2.0, 4.0, 0),
        peft("bfloat16", "compiled", 3.4, 4.0, 1),
        # float32 PEFT is faster still, but another precision.
        peft("float32", "compiled", 0.5, 1.0, 0),
        _run("ours", "float32", 1.0, 2.0, 1.0),
    ]
    rows = {r["dtype"]: r for r in train_benchmark.comparisons(runs)}
    bf16 = rows["bfloat16"]
    assert bf16["peft_mode"] == "bfloat16-compiled"
    assert bf16["peft_step_s"] == pytest.approx(2.7) and bf16["speedup"] == pytest.approx(2.7)
    assert bf16["peft_modes_step_s"] == pytest.approx(
        {"bfloat16-eager": 3.0, "bfloat16-compiled": 2.7}
    )
    assert bf16["memory_ratio"] == pytest.approx(1.0 / 4.0)  # the same (compiled) mode's RSS
    assert rows["float32"]["peft_mode"] == "float32-compiled"
    assert rows["float32"]["speedup"] == pytest.approx(0.5)
    table = train_benchmark.markdown(list(rows.values()))
    assert "| bfloat16-compiled | 2.70 (2.70) | 2.70× |" in table
    assert "- small b32 bfloat16: bfloat16-eager 3.00, bfloat16-compiled 2.70" in table


def test_gpu_rows_report_device_memory_and_both_mfus():
    gpu = {"device": "cuda", "mfu_measured_bf16_peak": 0.5, "mfu_nominal": 0.4}
    runs = [
        _run("ours", "bfloat16", 0.1, 0.1, 3.0, device_peak_gib=8.0, **gpu),
        _run("peft", "bfloat16", 0.2, 0.2, 4.0, device_peak_gib=16.0, device="cuda"),
    ]
    [row] = train_benchmark.comparisons(runs)
    assert row["device"] == "cuda" and row["device_memory_ratio"] == 0.5
    assert (row["ours_mfu_measured_bf16_peak"], row["ours_mfu_nominal"]) == (0.5, 0.4)
    table = train_benchmark.markdown([row])
    assert "| peak RSS; GPU ours / PEFT | MFU (measured bf16 peak / nominal) |" in table
    assert "| 3.00 / 4.00 GiB; 8.00 / 16.00 | 50%/40% |" in table


def _row(size, batch, dtype, speedup, memory=0.4, fraction=0.45, device="cpu", mfu=None):
    return {
        "size": size,
        "batch": batch,
        "dtype": dtype,
        "remat_layers": "none",
        "device": device,
        "speedup": speedup,
        "memory_ratio": memory,
        "ours_fraction_of_matmul_peak": fraction,
        "ours_mfu_nominal": mfu,
    }


def test_goals_follow_the_issue_per_precision_and_case():
    rows = [
        _row("small", 8, "bfloat16", 1.99),
        _row("small", 32, "bfloat16", 2.0, memory=0.51),
        _row("base", 8, "bfloat16", 2.1, fraction=0.5),
        _row("small", 8, "float32", 1.2),  # no float32 goal at small b8
        _row("small", 32, "float32", 1.5),
        _row("base", 8, "float32", 1.49, fraction=0.1),  # no fraction goal in float32
        _row("base", 32, "bfloat16", 1.1, device="cuda", mfu=0.41),
        _row("large", 8, "bfloat16", 0.9, device="cuda", mfu=0.2),
    ]
    assert train_benchmark.goals(rows) == {
        "small:8 bfloat16 remat=none": {"speedup": False},
        "small:32 bfloat16 remat=none": {"speedup": True, "memory": False},
        "base:8 bfloat16 remat=none": {"fraction_of_peak": True, "speedup": True},
        "small:32 float32 remat=none": {"speedup": True, "memory": True},
        "base:8 float32 remat=none": {"speedup": False},
        # GPU: ahead of PEFT everywhere, MFU >= 40% at base b32.
        "base:32 bfloat16 remat=none (cuda)": {"mfu": True, "speedup": True},
        "large:8 bfloat16 remat=none (cuda)": {"speedup": False},
    }


def test_peft_modes_follow_the_dtypes_and_refuse_others():
    settings = train_benchmark.BenchmarkSettings(dtypes=("bfloat16",))
    assert settings.modes() == ["bfloat16-eager", "bfloat16-compiled"]
    picked = train_benchmark.BenchmarkSettings(peft_modes=("bfloat16-compiled", "float32-eager"))
    assert picked.modes() == ["float32-eager", "bfloat16-compiled"]  # in the run order
    with pytest.raises(SystemExit):
        benchmark_train.parse(["--dtypes", "bfloat16", "--peft-modes", "float32-compiled"])
    cuda = benchmark_train.parse(["--device", "cuda"])
    assert cuda.nominal_peak_gflops() == 989e3 and cuda.matmul_n() == 8192
    assert benchmark_train.parse([]).nominal_peak_gflops() is None


def test_cases_must_name_a_size_and_batch():
    with pytest.raises(SystemExit):
        benchmark_train.parse(["--cases", "huge:8"])
    with pytest.raises(SystemExit):
        benchmark_train.parse(["--cases", "small"])
