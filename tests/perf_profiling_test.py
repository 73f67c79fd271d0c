"""Tests of prompt_tuning.perf.profiling: HLO parsing, categories and a real profiled step."""

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.perf import profiling

ENC = "jit(step)/jvp(EncoderDecoder)/EncoderDecoder.encode/encoder/layers_0"
BWD = "jit(step)/transpose(jvp(EncoderDecoder))/EncoderDecoder.encode/encoder/layers_0"
DOT_DIMS = "lhs_contracting_dims={1}, rhs_contracting_dims={0}"
HLO = f"""HloModule jit_step, is_scheduled=true

%fused_dot (param_0: bf16[16,32], param_1: bf16[32,8]) -> f32[16,8] {{
  %param_0 = bf16[16,32]{{1,0}} parameter(0)
  %param_1 = bf16[32,8]{{1,0}} parameter(1)
  ROOT %dot.1 = f32[16,8]{{1,0}} dot(%param_0, %param_1), {DOT_DIMS}, \
metadata={{op_name="{BWD}/mlp/wo/dot_general"}}
}}

%fused_softmax (param_0.1: f32[2,4,8,8]) -> f32[2,4,8,8] {{
  %param_0.1 = f32[2,4,8,8]{{3,2,1,0}} parameter(0)
  ROOT %exponential.1 = f32[2,4,8,8]{{3,2,1,0}} exponential(%param_0.1), \
metadata={{op_name="{ENC}/attention/exp"}}
}}

ENTRY %main.1 (a: bf16[16,32], b: bf16[32,8], c: f32[2,4,8,8]) -> bf16[16,32] {{
  %a = bf16[16,32]{{1,0}} parameter(0)
  %b = bf16[32,8]{{1,0}} parameter(1)
  %c = f32[2,4,8,8]{{3,2,1,0}} parameter(2)
  %ynn_fusion = f32[16,8]{{1,0}} fusion(%a, %b), kind=kCustom, calls=%fused_dot
  %softmax_fusion = f32[2,4,8,8]{{3,2,1,0}} fusion(%c), kind=kLoop, calls=%fused_softmax, \
metadata={{op_name="{ENC}/attention/exp"}}
  %rng = u32[64]{{0}} rng-bit-generator(%c), metadata={{op_name="{ENC}/Dropout_0/random_bits"}}
  %norm = f32[16,8]{{1,0}} rsqrt(%ynn_fusion), \
metadata={{op_name="{ENC}/pre_mlp_layer_norm/rsqrt"}}
  %copy.2 = f32[16,8]{{1,0}} copy(%norm)
  ROOT %copy.1 = bf16[16,32]{{1,0}} copy(%a)
}}
"""


def test_instructions_take_their_fusions_ops_and_names():
    found = profiling.hlo_instructions(HLO)
    fusion = found["ynn_fusion"]
    assert fusion.fused_ops == {"parameter", "dot"}
    # No op_name of its own: the fused dot's.
    assert fusion.op_name.endswith("mlp/wo/dot_general")
    categories = {name: profiling.categorize(found[name]) for name in found}
    assert categories["ynn_fusion"] == "matmul (backward)"
    assert categories["softmax_fusion"] == "attention softmax, mask, bias"
    assert categories["rng"] == "dropout (random bits, masks)"
    assert categories["norm"] == "layer norm"
    # No name of its own: its operand's; nothing named at all: unattributed.
    assert categories["copy.2"] == "layer norm"
    assert categories["copy.1"] == "unattributed (copies, loop control)"


def test_profile_of_a_compiled_function_attributes_its_ops():
    def f(x, w):
        with jax.named_scope("EncoderDecoder.encode/encoder/layers_0/attention"):
            scores = jnp.einsum("bik,bjk->bij", x, x)
            weights = jax.nn.softmax(scores, axis=-1)
        return jnp.einsum("bij,bjk->bik", weights, x) @ w

    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64, 64)), jnp.float32)
    w = jnp.eye(64)
    compiled = jax.jit(f).lower(x, w).compile()
    run = lambda: jax.block_until_ready(compiled(x, w))  # noqa: E731
    run()
    profile = profiling.profile_compiled(run, compiled.as_text(), steps=2)
    assert profile["events"] >= 3
    assert profile["categories"]["matmul (forward)"] > 0
    assert "attention softmax, mask, bias" in profile["categories"]
    assert abs(sum(profile["shares"].values()) - 1) < 1e-9
    rows = profiling.format_profile(profile, wall_seconds=0.01)
    assert rows[0].startswith("| category") and "all ops" in rows[-1]
