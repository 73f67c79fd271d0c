"""Tests of prompt_tuning.perf.costs: the FLOP model against the dots XLA compiles, and the check
that a prompt-tuning step computes no frozen-weight gradient (while full fine-tuning does).

The compiled programs are the library's real `trainer.train_step` on tiny T5s, so the FLOP model
is checked against XLA's own program rather than against a copy of its formula.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts, t5
from prompt_tuning.perf import costs
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import decoding
from prompt_tuning.train import optimizers, trainer
from prompt_tuning.train.model import PromptModel

B, T, P, S = 2, 7, 3, 5  # B*(P+T) = 20 and B*S = 10 equal no weight dimension


def _compiled_step(config, regex: str):
    """(optimized HLO text of the jitted train_step, full parameters) for one tiny model."""
    model = PromptModel(t5.EncoderDecoder(config, prompts.Prompt(P)))
    params = nn.unbox(model.init_boxed(jax.random.key(0), T, S))
    trainable, frozen = optimizers.split_params(params, regex)
    optimizer = optimizers.adafactor()
    state = trainer.TrainState(jnp.zeros([], jnp.int32), trainable, optimizer.init(trainable))
    targets = np.full((B, S), 3, np.int32)
    batch = {
        "encoder_input_tokens": np.full((B, T), 5, np.int32),
        "decoder_input_tokens": targets,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((B, S), np.float32),
    }
    step = functools.partial(trainer.train_step, model=model, optimizer=optimizer)
    compiled = jax.jit(step).lower(state, frozen, batch, jax.random.key(1)).compile()
    return compiled.as_text(), params


T5_1_1 = t5_config.tiny(dropout_rate=0.1)
# Original T5's shape: ReLU MLP with one input kernel, logits tied to the embedding.
ORIGINAL = t5_config.tiny(dropout_rate=0.1, mlp_activations=("relu",), logits_via_embedding=True)


@pytest.fixture(scope="module")
def steps():
    prompt_hlo, params = _compiled_step(T5_1_1, "prompt")
    full_hlo, _ = _compiled_step(T5_1_1, ".*")
    return prompt_hlo, full_hlo, params


def test_step_flops_equal_the_dots_xla_compiles(steps):
    prompt_hlo, full_hlo, _ = steps
    flops = costs.step_flops(T5_1_1, B, T, P, S)
    assert costs.dot_flops(prompt_hlo) == flops["step"]
    full = costs.step_flops(T5_1_1, B, T, P, S, full_finetuning=True)
    assert costs.dot_flops(full_hlo) == full["step"]
    # Weight gradients cost one more pass of the projections (and the dropped decoder work).
    assert full["step"] - flops["step"] > flops["linear"]
    assert flops["forward"] == flops["linear"] + flops["attention"]


def test_step_flops_of_original_t5_equal_the_compiled_dots():
    prompt_hlo, _ = _compiled_step(ORIGINAL, "prompt")
    assert costs.dot_flops(prompt_hlo) == costs.step_flops(ORIGINAL, B, T, P, S)["step"]


@pytest.mark.parametrize("config", [T5_1_1, ORIGINAL], ids=["t5_1_1", "original"])
def test_greedy_and_score_flops_equal_the_dots_xla_compiles(config):
    # The programs evaluation, pt-infer and pt-serve run (`t5.decoding`), on a prompted tiny T5.
    model = t5.EncoderDecoder(config, prompts.Prompt(P))
    new_tokens, labels = 6, 3
    params = nn.unbox(PromptModel(model).init_boxed(jax.random.key(0), T, S))
    inputs = np.full((B, T), 5, np.int32)
    greedy = functools.partial(decoding.greedy_decode, model, max_decode_length=new_tokens)
    hlo = jax.jit(greedy).lower(params, inputs).compile().as_text()
    flops = costs.greedy_flops(config, B, T, P, new_tokens)
    # The decoding loop's body is one `while` computation, counted once by dot_flops.
    assert costs.dot_flops(hlo) == flops["prefill"] + flops["step"]
    assert flops["total"] == flops["prefill"] + new_tokens * flops["step"]
    targets = np.full((B * labels, S), 3, np.int32)
    hlo = jax.jit(functools.partial(decoding.score, model)).lower(params, inputs, targets, targets)
    flops = costs.score_flops(config, B, T, P, labels, S)
    assert costs.dot_flops(hlo.compile().as_text()) == flops["total"]
    # Each input is encoded once for all its labels: the encoder's share is that of B rows.
    assert flops["encoder"] == costs.greedy_flops(config, B, T, P, 1)["prefill"]


def test_prompt_step_has_no_weight_gradients_but_full_finetuning_has(steps):
    prompt_hlo, full_hlo, params = steps
    shapes = costs.frozen_weight_shapes(params, "prompt")
    assert costs.weight_gradient_ops(prompt_hlo, shapes) == []
    found = costs.weight_gradient_ops(full_hlo, shapes)
    # Every 2-D kernel gets its gradient when everything trains: [H, F], [F, H], [H, N*K] ...
    h, f = T5_1_1.emb_dim, T5_1_1.mlp_dim
    assert any(f"[{h},{f}]" in line for line in found) or any(
        f"[{f},{h}]" in line for line in found
    )
    assert len(found) >= 4


def test_dot_flops_reads_operand_shapes_inside_fusions():
    dims = "lhs_contracting_dims={1}, rhs_contracting_dims={0}"
    batched = (
        "lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}"
    )
    hlo = f"""HloModule m

%fused_computation (param_0: bf16[16,32], param_1: bf16[32,8]) -> f32[16,8] {{
  %param_0 = bf16[16,32]{{1,0}} parameter(0)
  %param_1 = bf16[32,8]{{1,0}} parameter(1)
  ROOT %dot.1 = f32[16,8]{{1,0}} dot(%param_0, %param_1), {dims}
}}

ENTRY %main (a: bf16[16,32], b: bf16[32,8], c: f32[4,5,6], d: f32[4,6,7]) -> f32[16,8] {{
  %a = bf16[16,32]{{1,0}} parameter(0)
  %b = bf16[32,8]{{1,0}} parameter(1)
  %c = f32[4,5,6]{{2,1,0}} parameter(2)
  %d = f32[4,6,7]{{2,1,0}} parameter(3)
  %dot.2 = f32[4,5,7]{{2,1,0}} dot(%c, %d), {batched}
  ROOT %fusion = f32[16,8]{{1,0}} fusion(%a, %b), kind=kCustom, calls=%fused_computation
}}
"""
    assert costs.dot_flops(hlo) == 2 * 16 * 8 * 32 + 2 * 4 * 5 * 7 * 6


def test_step_flops_scale_with_batch_and_layers():
    small = t5_config.t5_1_1("small")
    one, two = (costs.step_flops(small, b, 128, 100, 8)["step"] for b in (8, 16))
    assert two == 2 * one  # every term is per token
    deeper = costs.step_flops(small.replace(num_encoder_layers=16), 8, 128, 100, 8)["step"]
    per_layer = (deeper - one) / 8
    d, f, h, length = 512, 1024, 384, 228
    # One encoder layer per token: 4 projections + 3 MLP kernels and two attention products,
    # forward once and backward once (attention twice): (8dh + 6df) * 2 + 4Lh * 3.
    assert per_layer == 8 * length * ((8 * d * h + 6 * d * f) * 2 + 4 * length * h * 3)
