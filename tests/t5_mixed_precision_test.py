"""Mixed precision (T5Config.dtype = bfloat16): bfloat16 matmuls accumulated in float32.

Checked against float64 references (the matmul helper), against the float32 model (logits within
a stated bfloat16 tolerance, on the tiny, the tiny pretrained and the small T5), and on the traced
and compiled train step: every dot takes bfloat16 operands and accumulates in float32, forward and
backward; norms, softmax, logits and loss run in float32; the prompt, its gradient and optimizer
state stay float32; bfloat16 frozen weights are used without a float32 copy.
"""

import collections
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import pretrained, prompts, t5
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network, precision
from prompt_tuning.train import optimizers, trainer
from prompt_tuning.train.model import PromptModel

BF16 = jnp.bfloat16
# bfloat16 keeps 8 significant bits: one rounding is off by at most 2^-9 of the value.
BF16_UNIT = 2.0**-9


def _bf16_exact(rng: np.random.Generator, shape) -> np.ndarray:
    """float64 values that bfloat16 represents exactly (so only the accumulation can differ)."""
    return np.asarray(jnp.asarray(rng.normal(size=shape), BF16), np.float64)


@pytest.fixture(params=precision.MATMUL_LAYOUTS)
def layout(request, monkeypatch):
    """Each of `contract`'s layouts (the CPU's own and the accelerators' one), forced by its env."""
    monkeypatch.setenv(precision.MATMUL_LAYOUT_ENV, request.param)
    assert precision.matmul_layout() == request.param
    return request.param


def test_matmul_layout_follows_the_backend_and_names_a_bad_setting(monkeypatch):
    monkeypatch.delenv(precision.MATMUL_LAYOUT_ENV, raising=False)
    want = "batched" if jax.default_backend() == "cpu" else "einsum"
    assert precision.matmul_layout() == want
    monkeypatch.setenv(precision.MATMUL_LAYOUT_ENV, "transposed")
    with pytest.raises(
        ValueError, match=r"PROMPT_TUNING_MATMUL_LAYOUT='transposed'.*batched, einsum"
    ):
        precision.matmul_layout()


@pytest.mark.parametrize(
    "spec,shape_a,shape_b",
    [
        ("aby,yz->abz", (2, 3, 4096), (4096, 16)),  # Dense
        ("bsnk,btnk->bnst", (2, 5, 3, 1024), (2, 7, 3, 1024)),  # attention scores
        ("bnst,btnk->bsnk", (2, 3, 5, 2048), (2, 2048, 3, 8)),  # weighted values
    ],
)
def test_contract_accumulates_in_float32(spec, shape_a, shape_b, layout):
    rng = np.random.default_rng(0)
    a, b = _bf16_exact(rng, shape_a), _bf16_exact(rng, shape_b)
    expected = np.einsum(spec, a, b)
    got = jax.jit(functools.partial(precision.contract, spec, dtype=BF16))(a, b)
    assert got.dtype == jnp.float32
    scale = np.sqrt(np.mean(expected**2))
    # Long sums (K = 1024..4096): float32 accumulation is exact to ~1e-6 of the result's scale,
    # while a bfloat16 accumulator rounds every partial sum (checked: > 100x worse).
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale)
    bf16_sum = jnp.einsum(spec, a.astype(BF16), b.astype(BF16), preferred_element_type=BF16)
    assert np.abs(np.asarray(bf16_sum, np.float64) - expected).max() > 1e-3 * scale


def test_contract_gradients_are_bfloat16_matmuls_accumulated_in_float32(layout):
    spec = "bsnk,btnk->bnst"
    rng = np.random.default_rng(1)
    a, b = _bf16_exact(rng, (2, 5, 3, 64)), _bf16_exact(rng, (2, 7, 3, 64))
    g = rng.normal(size=(2, 3, 5, 7))  # float32 cotangent of the float32 scores

    _, vjp = jax.vjp(
        lambda x, y: precision.contract(spec, x, y, BF16), a.astype(BF16), b.astype(BF16)
    )
    grad_a, grad_b = jax.jit(vjp)(jnp.asarray(g, jnp.float32))
    assert grad_a.dtype == BF16 and grad_b.dtype == BF16
    # The cotangent is rounded to bfloat16 first, then contracted exactly, then rounded once.
    g16 = np.asarray(jnp.asarray(g, BF16), np.float64)
    want_a = np.einsum("bnst,btnk->bsnk", g16, b)
    want_b = np.einsum("bnst,bsnk->btnk", g16, a)
    for got, want in ((grad_a, want_a), (grad_b, want_b)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2 * BF16_UNIT, atol=1e-6)


def _walk(jaxpr, found: collections.Counter) -> None:
    """Counts (primitive, input dtypes, output dtype) of the numerically relevant ops."""
    watched = {"dot_general", "exp", "log", "rsqrt", "tanh", "erf", "reduce_max", "logistic"}
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in watched:
            ins = tuple(str(v.aval.dtype) for v in eqn.invars)
            found[(eqn.primitive.name, ins, str(eqn.outvars[0].aval.dtype))] += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _walk(inner, found)


def _tiny_step(dtype: str, frozen_dtype: str | None, remat: str = "none"):
    """(train_step, its arguments) of the tiny T5 with a 3-token prompt."""
    config = t5_config.tiny(dropout_rate=0.1, dtype=dtype, remat_policy=remat)
    model = PromptModel(t5.EncoderDecoder(config, prompts.Prompt(3)))
    params = nn.unbox(model.init_boxed(jax.random.key(0), 5, 4))
    trainable, frozen = optimizers.split_params(params, "prompt")
    frozen = precision.cast_matmul_weights(frozen, frozen_dtype)  # FROZEN_DTYPE
    optimizer = optimizers.adafactor()
    state = trainer.TrainState(jnp.zeros([], jnp.int32), trainable, optimizer.init(trainable))
    rng = np.random.default_rng(0)
    targets = rng.integers(2, 128, (2, 4), dtype=np.int32)
    batch = {
        "encoder_input_tokens": rng.integers(2, 128, (2, 5), dtype=np.int32),
        "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((2, 4), np.float32),
    }
    step = functools.partial(trainer.train_step, model=model, optimizer=optimizer)
    return step, (state, frozen, batch, jax.random.key(1))


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_every_matmul_is_bfloat16_with_float32_accumulation_forward_and_backward(remat, layout):
    step, args = _tiny_step("bfloat16", "bfloat16", remat)
    found = collections.Counter()
    _walk(jax.make_jaxpr(step)(*args).jaxpr, found)
    dots = {k: n for k, n in found.items() if k[0] == "dot_general"}
    assert dots == {("dot_general", ("bfloat16", "bfloat16"), "float32"): sum(dots.values())}
    # 2+2 layers: forward and activation-gradient matmuls, well over one per projection.
    assert sum(dots.values()) > 60
    # Softmax (exp, max), log-sum-exp, RMS norm (rsqrt) and GELU (tanh) all in float32.
    others = {k for k in found if k[0] != "dot_general"}
    assert {k[0] for k in others} >= {"exp", "log", "rsqrt", "tanh", "reduce_max"}
    assert all(k[1] == ("float32",) * len(k[1]) and k[2] == "float32" for k in others), others


def test_float32_model_has_no_bfloat16_op():
    step, args = _tiny_step("float32", None)
    found = collections.Counter()
    _walk(jax.make_jaxpr(step)(*args).jaxpr, found)
    assert all(set(k[1]) == {"float32"} and k[2] == "float32" for k in found), found


def _dot_operand_types(hlo: str) -> collections.Counter:
    """(lhs, rhs, out) element types of every dot in optimized HLO text."""
    types, seen = {}, collections.Counter()
    for line in hlo.splitlines():
        if line and not line.startswith(" "):
            types = {}
            continue
        match = re.match(r"\s*(?:ROOT )?%(\S+) = (\w+)\[.*? (\w[\w-]*)\((.*)", line)
        if not match:
            continue
        name, out, opcode, rest = match.groups()
        types[name] = out
        if opcode == "dot":
            lhs, rhs = re.findall(r"%([\w.\-]+)", rest)[:2]
            seen[(types[lhs], types[rhs], out)] += 1
    return seen


@pytest.fixture(scope="module")
def compiled_bf16_step():
    step, args = _tiny_step("bfloat16", "bfloat16")
    compiled = jax.jit(step).lower(*args).compile()
    return compiled, args


def test_compiled_step_keeps_bfloat16_dots_and_no_float32_copy_of_frozen_weights(
    compiled_bf16_step,
):
    compiled, (_, frozen, _, _) = compiled_bf16_step
    hlo = compiled.as_text()
    # XLA:CPU would convert a dot it cannot run as bfloat16 -> float32 to a float32 dot.
    dots = _dot_operand_types(hlo)
    assert set(dots) == {("bf16", "bf16", "f32")}, dots
    # No materialised float32 array (a result of the entry computation; values inside fusions
    # are not stored) shaped like a frozen kernel or the embedding: the weights are used in
    # bfloat16 as stored (the small relative-position tables are read in float32 on purpose).
    kernels = {
        tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(frozen)[0]
        if leaf.ndim == 2 and "relpos_bias" not in jax.tree_util.keystr(path)
    }
    entry = hlo[hlo.index("\nENTRY") :]
    f32_arrays = {
        tuple(int(d) for d in dims.split(","))
        for dims in re.findall(r"= f32\[([0-9,]+)\]", entry)
        if dims.count(",") == 1
    }
    assert kernels and not kernels & f32_arrays, kernels & f32_arrays


def test_prompt_gradient_and_optimizer_state_stay_float32(compiled_bf16_step):
    compiled, (state, frozen, batch, rng) = compiled_bf16_step
    new_state, metrics = compiled(state, frozen, batch, rng)
    for leaf in jax.tree.leaves((new_state.params, new_state.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    delta = (
        new_state.params["encoder"]["prompt"]["prompt"]
        - state.params["encoder"]["prompt"]["prompt"]
    )
    assert np.abs(np.asarray(delta)).max() > 0
    # The same step in float32: the same loss up to bfloat16 rounding of the activations.
    step32, args32 = _tiny_step("float32", None)
    _, metrics32 = jax.jit(step32)(*args32)
    np.testing.assert_allclose(metrics["loss"], metrics32["loss"], rtol=0.02)


def _logits(config, params, encoder_tokens, targets):
    model = network.EncoderDecoder(config)
    inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    apply = lambda p: model.apply({"params": p}, encoder_tokens, inputs, targets)  # noqa: E731
    logits = jax.jit(apply)(params)
    assert logits.dtype == jnp.float32  # T5X's float32 logits layer, also in bfloat16
    return np.asarray(logits, np.float64)


# Relative RMS error of the logits allowed in bfloat16: 16 bfloat16 units (2^-9 each), i.e. a few
# roundings of every hidden state compounding over the layers (measured: 0.3-1.5%); log
# probabilities within 0.25 nats. A model that rounded the softmax or the logits themselves to
# bfloat16, or accumulated matmuls in bfloat16, exceeds this on `small` (checked by hand).
REL_RMS_TOLERANCE = 16 * BF16_UNIT


@pytest.mark.parametrize("name", ["tiny", "tiny_pretrained", "small"])
def test_bfloat16_logits_match_float32_within_bfloat16_tolerance(name, layout):
    rng = np.random.default_rng(0)
    if name == "tiny_pretrained":
        config = pretrained.tiny_t5_config()
        _, params = t5.load_checkpoint(pretrained.tiny_t5_checkpoint(), config)
    else:
        config = t5_config.tiny() if name == "tiny" else t5_config.t5_1_1("small")
        params = None
    encoder_tokens = rng.integers(2, config.vocab_size, (2, 24), dtype=np.int32)
    encoder_tokens[1, 17:] = 0  # padding
    targets = rng.integers(2, config.vocab_size, (2, 5), dtype=np.int32)
    if params is None:
        init = network.EncoderDecoder(config).init
        params = jax.jit(lambda r: nn.unbox(init(r, encoder_tokens, targets, targets)["params"]))(
            jax.random.key(0)
        )
    expected = _logits(config, params, encoder_tokens, targets)
    config16 = config.replace(dtype="bfloat16")
    params16 = precision.cast_matmul_weights(params, BF16)  # FROZEN_DTYPE=bfloat16 too
    for weights in (params, params16):
        got = _logits(config16, weights, encoder_tokens, targets)
        error = np.sqrt(np.mean((got - expected) ** 2)) / np.sqrt(np.mean(expected**2))
        assert error < REL_RMS_TOLERANCE, (name, error)
        log_p = jax.nn.log_softmax(got, -1) - jax.nn.log_softmax(expected, -1)
        assert np.abs(np.asarray(log_p)).max() < 0.25


def test_frozen_dtype_casts_only_the_matmul_weights():
    params = {
        "encoder": {
            "layers_0": {"mlp": {"wi": {"kernel": np.ones((2, 3), np.float32)}}},
            "relpos_bias": {"rel_embedding": np.ones((4, 32), np.float32)},
            "encoder_norm": {"scale": np.ones(2, np.float32)},
        },
        "token_embedder": {"embedding": np.ones((5, 2), np.float32)},
    }
    kept = precision.cast_matmul_weights(params, BF16)
    flat = {
        jax.tree_util.keystr(p): leaf.dtype
        for p, leaf in jax.tree_util.tree_flatten_with_path(kept)[0]
    }
    assert {k for k, d in flat.items() if d == BF16} == {
        "['encoder']['layers_0']['mlp']['wi']['kernel']",
        "['token_embedder']['embedding']",
    }
    assert params["encoder"]["encoder_norm"]  # not consumed by default
    consumed = precision.cast_matmul_weights(params, BF16, consume=True)
    assert jax.tree.structure(consumed) == jax.tree.structure(kept)
    assert params == {}
