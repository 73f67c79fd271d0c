"""Tests of tools/benchmark_train.py: the CLI's JSON, the FLOP count, the weight-gradient check.

No timing assertions: timings depend on the machine and its load.
"""

import json
import pathlib
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts, t5
from tools import benchmark_matmul, benchmark_train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _anchor_count(d, f, h, v, n_enc, n_dec, enc_len, dec_len, batch):
    """ANCHORS.md's formula, written out independently of `step_flops`."""
    t_e, t_d = batch * enc_len, batch * dec_len
    lin = (
        n_enc * t_e * (8 * d * h + 6 * d * f)
        + n_dec * t_d * (12 * d * h + 6 * d * f)
        + n_dec * t_e * 4 * d * h
        + t_d * 2 * d * v
    )
    att = n_enc * t_e * 4 * enc_len * h + n_dec * t_d * 4 * (dec_len + enc_len) * h
    return lin, att


def test_step_flops_matches_anchors_small_batch_32():
    config = benchmark_train.model_config("small")
    flops = benchmark_train.step_flops(config, 32, 128, 100, 8)
    # ANCHORS.md: "Small, batch 32: 745.6 GFLOP per prompt-tuning step".
    assert round(flops["step"] / 1e9, 1) == 745.6
    lin, att = _anchor_count(512, 1024, 6 * 64, 32128, 8, 8, 228, 8, 32)
    assert flops["step"] == 2 * lin + 3 * att
    full = benchmark_train.step_flops(config, 32, 128, 100, 8, full_finetuning=True)
    assert full["step"] - flops["step"] == lin  # weight gradients cost one more `lin`


def test_step_flops_base_batch_8_by_hand():
    config = benchmark_train.model_config("base")
    flops = benchmark_train.step_flops(config, 8, 128, 100, 8)
    lin, att = _anchor_count(768, 2048, 12 * 64, 32128, 12, 12, 228, 8, 8)
    assert flops["linear"] == lin and flops["attention"] == att
    assert flops["forward"] == lin + att
    assert flops["step"] == flops["forward"] + lin + 2 * att


def _tiny_model_and_batch():
    module = t5.EncoderDecoder(t5.configs.tiny(), prompts.Prompt(3))
    batch = benchmark_train._random_batch(
        {"seed": 0, "batch": 2, "input_length": 5, "target_length": 3}, 128
    )
    params = module.init(
        jax.random.key(0),
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        enable_dropout=False,
    )["params"]
    return module, batch, jax.tree.map(np.asarray, params)


def test_weight_gradient_ops_finds_full_finetuning_gradients():
    # The prompt-only case (0 ops) is checked on the real train step by the CLI test below.
    module, batch, params = _tiny_model_and_batch()

    def loss(all_params):
        logits = module.apply(
            {"params": all_params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            enable_dropout=False,
        )
        return jnp.sum(logits)

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    shapes = [
        leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if "prompt" not in jax.tree_util.keystr(path)
    ]
    found = benchmark_train.weight_gradient_ops(hlo, shapes)
    # Full fine-tuning has [H, F] (wi) and [F, H] (wo) gradient matmuls: H 32, F 64.
    assert any("f32[32,64]" in line for line in found)
    assert any("f32[64,32]" in line for line in found)


def test_weight_gradient_ops_parses_hlo_lines():
    hlo = "\n".join(
        [
            "  %dot.1 = f32[512,1024]{1,0} dot(f32[7296,512]{1,0} %a, f32[7296,1024]{1,0} %b)",
            "  %dot.2 = f32[7296,1024]{1,0} dot(f32[7296,512]{1,0} %a, f32[512,1024]{1,0} %w)",
            "  %convert.3 = bf16[512,1024]{1,0} convert(f32[512,1024]{1,0} %w)",
        ]
    )
    found = benchmark_train.weight_gradient_ops(hlo, [(512, 1024)])
    assert len(found) == 1 and "%dot.1" in found[0]


def test_jax_matmul_gflops_is_positive_and_bounded():
    gflops = benchmark_matmul.jax_matmul_gflops(n=64, repeats=2)
    # 2 * 64^3 FLOPs cannot take less than a nanosecond on any CPU.
    assert 0 < gflops < 2 * 64**3


def test_model_config_rejects_unknown_size():
    with pytest.raises(ValueError, match="--config"):
        benchmark_train.model_config("huge")


def test_cli_tiny_two_steps_prints_valid_json():
    command = [sys.executable, "tools/benchmark_train.py", "--config", "tiny", "--batch", "2"]
    command += ["--steps", "2", "--warmup", "1", "--matmul-size", "64", "--matmul-repeats", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    (run,) = report["runs"]
    assert run["system"] == "ours" and run["config"] == "tiny" and run["batch"] == 2
    assert len(run["times_s"]) == 2 and len(run["losses"]) == 2
    assert run["step_s_median"] == statistics.median(run["times_s"])
    assert run["examples_per_s"] == pytest.approx(2 / run["step_s_median"])
    assert run["tokens_per_s"] == pytest.approx(2 * (128 + 8) / run["step_s_median"])
    assert all(np.isfinite(run["losses"]))
    # Random targets over 128 tokens: the cross-entropy starts near log(128) = 4.85.
    assert 3.0 < run["losses"][0] < 8.0
    # Tiny: H 32, F 64, h 32, V 128, 2+2 layers, L_e 228, L_d 8.
    lin, att = _anchor_count(32, 64, 32, 128, 2, 2, 228, 8, 2)
    assert run["flops_per_step"] == 2 * lin + 3 * att
    assert run["achieved_gflops"] == pytest.approx(
        run["flops_per_step"] / run["step_s_median"] / 1e9
    )
    assert run["weight_gradient_ops"] == 0
    assert run["peak_rss_gib"] > 0
    summary = report["summary"]
    assert summary["matmul_peaks_gflops"][0]["backend"] == "jax"
    assert summary["matmul_peaks_gflops"][0]["n"] == 64
    assert summary["setting"]["prompt_length"] == 100
    assert summary["comparisons"] == []


def test_peft_side_trains_only_a_prompt_of_the_same_width():
    from prompt_tuning.t5 import config as t5_config

    spec = {"size": "tiny", "batch": 2, "input_length": 16, "prompt_length": 4}
    spec |= {"target_length": 4, "dropout": 0.1, "seed": 0, "warmup": 1, "steps": 2}
    result = benchmark_train.run_peft_step(spec)
    # PEFT's prompt embedding is [P, H] of the same model: the only trainable tensor.
    assert result["trainable_params"] == 4 * t5_config.tiny().emb_dim
    assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
