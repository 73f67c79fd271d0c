"""Tests of `step.compiler_options`: the XLA options the trainer compiles its step with on CPU.

The options must reach XLA: with them, every YNNPACK library fusion of the compiled step holds a
dot and nothing else (XLA's default also folds elementwise ops into those fusions).
"""

import functools
import re

import jax

from prompt_tuning import prompts, t5
from prompt_tuning.parallel import partitioning
from prompt_tuning.train import optimizers, step
from prompt_tuning.train import params as run_params
from prompt_tuning.train.model import PromptModel

_STRUCTURAL = {"parameter", "bitcast", "tuple", "get-tuple-element", "constant"}


def _model(config) -> PromptModel:
    return PromptModel(t5.EncoderDecoder(config, prompts.Prompt(4)))


def _mesh():
    return partitioning.make_mesh(1, jax.devices()[:1])


def test_dots_only_fusions_for_narrow_mlps_and_the_remat_scheduler():
    small, base = t5.config.by_size("small"), t5.config.by_size("base")
    assert small.mlp_dim == 1024 and base.mlp_dim == 2048  # T5 1.1's widths
    assert step.compiler_options(_model(small), _mesh()) == step.CPU_DOTS_ONLY_OPTIONS
    assert step.compiler_options(_model(base), _mesh()) is None  # XLA's defaults
    assert step.compiler_options(_model(t5.config.by_size("tiny")), _mesh()) is None
    remat = step.compiler_options(_model(base.replace(remat_policy="full")), _mesh())
    assert remat == step.CPU_REMAT_OPTIONS
    both = step.compiler_options(_model(small.replace(remat_policy="dots")), _mesh())
    assert both == step.CPU_DOTS_ONLY_OPTIONS | step.CPU_REMAT_OPTIONS


def _ynn_fusion_ops(hlo: str) -> list[set[str]]:
    """The opcodes of each YNNPACK fusion's computation in an optimized HLO module."""
    called = {
        re.search(r"calls=%?([\w.\-]+)", line).group(1)
        for line in hlo.splitlines()
        if '"kind":"__ynn_fusion"' in line
    }
    ops = []
    for name in called:
        body = re.search(rf"^%?{re.escape(name)} .*?\{{\n(.*?)^\}}", hlo, re.S | re.M).group(1)
        ops.append(set(re.findall(r"=\s*\S+\s+([\w\-]+)\(", body)) - _STRUCTURAL)
    return ops


def test_compiled_step_fuses_dots_alone_with_the_options():
    config = t5.config.by_size("small", dtype="bfloat16", dropout_rate=0.1)
    # Two blocks each of small's widths: the options (and so the fusions) follow the MLP's width.
    config = config.replace(num_encoder_layers=2, num_decoder_layers=2)
    model, mesh = _model(config), _mesh()
    lengths = {"inputs": 12, "targets": 4}  # short: the fusions do not depend on lengths
    trainable, frozen = run_params.initial_params(
        model, mesh, jax.random.key(0), lengths, None, "prompt", None, log=None
    )
    optimizer = optimizers.adafactor()
    state = step.init_state(optimizer, trainable)
    batch = {
        "encoder_input_tokens": jax.numpy.ones((2, 12), "int32"),
        "decoder_target_tokens": jax.numpy.ones((2, 4), "int32"),
        "decoder_input_tokens": jax.numpy.ones((2, 4), "int32"),
        "decoder_loss_weights": jax.numpy.ones((2, 4), "float32"),
    }
    fn = jax.jit(functools.partial(step.train_step, model=model, optimizer=optimizer))
    lowered = fn.lower(state, frozen, batch, jax.random.key(1))
    options = step.compiler_options(model, mesh)
    assert options == step.CPU_DOTS_ONLY_OPTIONS  # small: a narrow MLP
    fusions = _ynn_fusion_ops(lowered.compile(compiler_options=options).as_text())
    assert fusions and all(ops == {"dot"} for ops in fusions), fusions
    # XLA's default, for contrast: some library fusions also hold the elementwise ops around dots.
    default = _ynn_fusion_ops(lowered.compile().as_text())
    assert any(ops - {"dot"} for ops in default), default
