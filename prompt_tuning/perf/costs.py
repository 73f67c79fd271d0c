"""What a step costs: FLOP models of training, decoding and scoring, the FLOPs of compiled programs,
weight-gradient checks.

Letters (as in ANCHORS-style counts): d = emb_dim, f = mlp_dim, h = num_heads * head_dim, V = vocab,
g = number of MLP input kernels (2 for T5 1.1's gated GELU, 1 for original T5), L_e = P + T (the
encoder length with the prompt), L_d = S (targets), T_e = B L_e and T_d = B L_d tokens. A
multiply-add is 2 FLOPs.

`step_flops` counts the matmuls of a prompt-tuning step by hand, `greedy_flops` those of greedy
decoding and `score_flops` those of rank classification; `dot_flops` counts the dots XLA actually
compiled (from the optimized HLO), so the two can be checked against each other (tests do, on tiny
T5s). `weight_gradient_ops` finds weight-shaped gradient ops in a compiled step: a
prompt-tuning step must have none (gradients only with respect to the prompt), full fine-tuning
has many.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any


def _mlp_flops(config: Any) -> int:
    """Forward FLOPs of one token through one MLP: wi_0 (, wi_1), wo."""
    return 2 * (len(config.mlp_activations) + 1) * config.emb_dim * config.mlp_dim


def _linear_flops(config: Any, t_e: int, t_d: int) -> dict[str, int]:
    """Forward matmul FLOPs of the projections and MLPs, per part of the model."""
    d, v = config.emb_dim, config.vocab_size
    h = config.num_heads * config.head_dim
    n_enc, n_dec = config.num_encoder_layers, config.num_decoder_layers
    mlp = _mlp_flops(config)
    return {
        # q, k, v, out: 4 kernels [d, h], 2 FLOPs per multiply-add.
        "encoder": n_enc * t_e * (8 * d * h + mlp),
        # self-attention q, k, v, out and cross-attention q, out on decoder tokens.
        "decoder": n_dec * t_d * (12 * d * h + mlp),
        # cross-attention k, v projected from every encoder position.
        "cross_kv": n_dec * t_e * 4 * d * h,
        "logits": t_d * 2 * d * v,
    }


def step_flops(
    config: Any,
    batch: int,
    input_length: int,
    prompt_length: int,
    target_length: int,
    full_finetuning: bool = False,
) -> dict[str, float]:
    """Matmul FLOPs of one training step of T5 with a prompt prepended to the encoder input.

    lin = n_enc T_e (8dh + 2(g+1)df) + n_dec T_d (12dh + 2(g+1)df) + n_dec T_e 4dh + T_d 2dV,
    att = n_enc T_e 4 L_e h + n_dec T_d 4 (L_d + L_e) h (scores and weighted values).

    Forward = lin + att. The backward pass of prompt tuning needs activation gradients only (lin +
    2 att: one matmul per projection, two per attention product), and none of those in the first
    decoder layer whose inputs depend on the decoder tokens alone: its self-attention sublayer
    (8dh for q, k, v, out and 8 L_d h for the two products, per decoder token) and the query side
    of its cross-attention (2dh for the query projection and 2 L_e h for the scores' query
    gradient). XLA drops that work. Full fine-tuning computes all of it and adds the weight
    gradients (another lin).

    Args:
      config: a `T5Config`.
      batch: B.
      input_length: real input tokens per example (T).
      prompt_length: P (prepended on the encoder).
      target_length: L_d.
      full_finetuning: count weight gradients too.

    Returns:
      {"linear", "attention", "forward", "backward", "step"} in FLOPs.
    """
    enc_len = prompt_length + input_length
    t_e, t_d = batch * enc_len, batch * target_length
    h = config.num_heads * config.head_dim
    linear = sum(_linear_flops(config, t_e, t_d).values())
    n_enc, n_dec = config.num_encoder_layers, config.num_decoder_layers
    attention = n_enc * t_e * 4 * enc_len * h + n_dec * t_d * 4 * (target_length + enc_len) * h
    backward = linear + 2 * attention
    if full_finetuning:
        backward += linear
    elif n_dec:
        # Decoder layer 0: self-attention (q, k, v, out; both products) and cross-attention's
        # query projection and query gradient of the scores.
        d = config.emb_dim
        backward -= t_d * (10 * d * h + 8 * target_length * h + 2 * enc_len * h)
    forward = linear + attention
    return {
        "linear": linear,
        "attention": attention,
        "forward": forward,
        "backward": backward,
        "step": forward + backward,
    }


def _encoder_flops(config: Any, batch: int, enc_len: int) -> int:
    """Forward matmul FLOPs of the prompted encoder and of every decoder layer's cross-attention
    keys and values (projected once per input)."""
    t_e, h = batch * enc_len, config.num_heads * config.head_dim
    parts = _linear_flops(config, t_e, 0)
    return parts["encoder"] + parts["cross_kv"] + config.num_encoder_layers * t_e * 4 * enc_len * h


def _decoder_token_flops(config: Any, enc_len: int, self_len: int) -> int:
    """Forward matmul FLOPs of one decoder token: every layer's projections, MLP and attention
    products (self-attention over `self_len` positions, cross-attention over `enc_len`), and the
    logits."""
    d, h = config.emb_dim, config.num_heads * config.head_dim
    # Self-attention q, k, v, out and cross-attention q, out; the MLP; both attention products.
    per_layer = 12 * d * h + _mlp_flops(config) + 4 * (self_len + enc_len) * h
    return config.num_decoder_layers * per_layer + 2 * d * config.vocab_size


def greedy_flops(
    config: Any, batch: int, input_length: int, prompt_length: int, new_tokens: int
) -> dict[str, float]:
    """Matmul FLOPs of greedy decoding `new_tokens` tokens with a KV cache (`t5.decoding`).

    The encoder and the cross-attention keys/values run once ("prefill"); each step then runs the
    decoder on one token per row, its self-attention over the whole cache of `new_tokens`
    positions (masked beyond the current one, as the compiled step does) and its cross-attention
    over the P + T encoder positions, and the logits over the vocabulary.

    Returns:
      {"prefill", "step" (one step of the batch), "total" (prefill + new_tokens steps)} in FLOPs.
    """
    enc_len = prompt_length + input_length
    prefill = _encoder_flops(config, batch, enc_len)
    step = batch * _decoder_token_flops(config, enc_len, new_tokens)
    return {"prefill": prefill, "step": step, "total": prefill + new_tokens * step}


def score_flops(
    config: Any,
    batch: int,
    input_length: int,
    prompt_length: int,
    num_labels: int,
    label_length: int,
) -> dict[str, float]:
    """Matmul FLOPs of rank classification: each input encoded once, its C label rows of S tokens
    decoded in one teacher-forced pass (`t5.decoding.score`).

    Returns:
      {"encoder" (with the cross-attention keys/values), "decoder" (the B*C label rows with their
      logits), "total"} in FLOPs.
    """
    enc_len = prompt_length + input_length
    encoder = _encoder_flops(config, batch, enc_len)
    tokens = batch * num_labels * label_length
    decoder = tokens * _decoder_token_flops(config, enc_len, label_length)
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


_SHAPE = re.compile(r"^[a-z0-9]+\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\((.*)")


def _dims(shape: str) -> list[int] | None:
    """`f32[8,228,512]{2,1,0}` -> [8, 228, 512]; None for tuples and tokens."""
    match = _SHAPE.match(shape)
    if not match:
        return None
    return [int(n) for n in match.group(1).split(",") if n]


def dot_flops(hlo_text: str) -> int:
    """FLOPs of every `dot` in an HLO module: 2 * prod(output dims) * prod(contracted dims).

    Reads optimized HLO text (`compiled.as_text()`), where dots may sit inside fusions; every
    computation is counted once, which holds for XLA:CPU's fusions (each fused computation has one
    caller). Loops are not unrolled: a dot inside a `while` body counts once.

    Args:
      hlo_text: HLO module text.

    Returns:
      The total FLOPs of the dots.
    """
    total = 0
    shapes: dict[str, list[int] | None] = {}
    for line in hlo_text.splitlines():
        if line and not line.startswith(" "):
            shapes = {}  # a new computation: instruction names are local to it
            for name, shape in re.findall(r"([\w.\-]+): (\w+\[[0-9,]*\])", line):
                shapes[name] = _dims(shape)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        shapes[name] = _dims(shape)
        if opcode != "dot":
            continue
        lhs = re.match(r"\s*%?([\w.\-]+)", rest).group(1)
        contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", rest)
        lhs_dims = shapes.get(lhs)
        if lhs_dims is None or contracting is None:
            raise ValueError(f"Cannot read the operands of this HLO dot: {line.strip()[:200]}")
        k = math.prod(lhs_dims[int(i)] for i in contracting.group(1).split(",") if i)
        total += 2 * math.prod(_dims(shape) or []) * k
    return total


_HLO_OP = re.compile(r"=\s*[a-z0-9]+\[([0-9,]+)\]\S*\s+(dot|convolution|custom-call|scatter)\(")


def weight_gradient_ops(hlo_text: str, weight_shapes: Sequence[Sequence[int]]) -> list[str]:
    """HLO matmuls/scatters whose result has a frozen weight's shape (i.e. weight gradients).

    A forward or activation-gradient matmul of a T5 produces `[B, L, ...]`-shaped results; only a
    weight gradient (`x^T dy`, or a scatter-add into the embedding table) has a kernel's shape,
    e.g. `[H, F]`. Pick batch and lengths so that no B*L equals a weight dimension.

    Args:
      hlo_text: (optimized) HLO module text, e.g. `compiled.as_text()`.
      weight_shapes: shapes of the frozen weights.

    Returns:
      The offending HLO lines (empty when no frozen weight gets a gradient).
    """
    shapes = {tuple(int(n) for n in shape) for shape in weight_shapes if len(shape) >= 2}
    found = []
    for line in hlo_text.splitlines():
        match = _HLO_OP.search(line)
        if match and tuple(int(n) for n in match.group(1).split(",")) in shapes:
            found.append(line.strip()[:200])
    return found


def frozen_weight_shapes(params: Any, trainable_regex: str = "prompt") -> list[tuple[int, ...]]:
    """Shapes of every parameter whose "/"-joined path does not match `trainable_regex`.

    Args:
      params: a nested dict of arrays (or several, merged by the caller).
      trainable_regex: TRAINABLE_PARAMS_REGEX of the run.

    Returns:
      The frozen parameters' shapes.
    """
    import jax  # noqa: PLC0415

    from prompt_tuning.train import optimizers  # noqa: PLC0415

    pattern = re.compile(trainable_regex)
    return [
        tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if not pattern.search(optimizers.path_name(path))
    ]
