"""A random frozen T5 drawn by one small program per kind of parameter (`t5.random_init`).

The reference is Flax's own initialization of the same model (`model.init`, one program): the
drawn parameters must have its names, shapes, dtypes and, parameter by parameter, its spread
(each initializer's scale: fan-in variance scaling, the query's extra 1/sqrt(head_dim), the
embedding's unit normal, the norms' ones), while being independent draws.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.parallel import partitioning
from prompt_tuning.t5 import checkpoint_tree, network, random_init
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.train import optimizers, params
from prompt_tuning.train.model import PromptModel

LENGTHS = {"inputs": 8, "targets": 4}


def _model(size="small", **overrides):
    config = t5_config.by_size(size, **overrides)
    return PromptModel(network.EncoderDecoder(config, prompt=prompts.Prompt(4)))


def _frozen(model, seed, mesh=None, frozen_dtype=None):
    mesh = mesh or partitioning.make_mesh(1)
    return params.initial_params(
        model, mesh, jax.random.key(seed), LENGTHS, None, "prompt", frozen_dtype, log=None
    )[1]


@pytest.fixture(scope="module")
def small():
    """(drawn frozen params, Flax's own init of the same model), flattened."""
    model = _model()
    drawn = checkpoint_tree.flatten(_frozen(model, 0))
    reference = nn.unbox(model.init_boxed(jax.random.key(0), 8, 4))
    reference = checkpoint_tree.flatten(optimizers.split_params(reference, "prompt")[1])
    return drawn, reference


def test_every_parameter_has_flax_init_name_shape_dtype_and_spread(small):
    drawn, reference = small
    assert sorted(drawn) == sorted(reference)
    for name, want in reference.items():
        got = drawn[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if want.size < 4096 or np.std(want) == 0:  # norm scales (ones), small tables
            np.testing.assert_array_equal(np.std(got) == 0, np.std(want) == 0, err_msg=name)
            if np.std(want) == 0:
                np.testing.assert_array_equal(got, want, err_msg=name)
            continue
        # Same initializer: the spreads agree within sampling noise (>= 4096 values: ~2%), and
        # so do the extremes (truncated normals stop at 2 standard deviations).
        assert np.std(got) == pytest.approx(np.std(want), rel=0.06), name
        assert np.abs(got).max() == pytest.approx(np.abs(want).max(), rel=0.35), name
        assert abs(np.mean(got)) < 0.05 * np.std(want), name
        assert not np.array_equal(got, want)  # independent draws, not Flax's values


def test_the_query_scale_is_not_shared_with_same_shaped_kernels(small):
    drawn, _ = small
    query = drawn["encoder/layers_0/attention/query/kernel"]
    key = drawn["encoder/layers_0/attention/key/kernel"]
    assert query.shape == key.shape
    head_dim = t5_config.by_size("small").head_dim
    ratio = np.std(np.asarray(key)) / np.std(np.asarray(query))
    # variance_scaling(fan_in, normal) / sqrt(head_dim) vs variance_scaling(fan_in, ...) alone.
    assert ratio == pytest.approx(np.sqrt(head_dim), rel=0.06)


def test_draws_are_distinct_per_parameter_and_repeat_per_seed():
    model = _model("tiny")
    first = checkpoint_tree.flatten(_frozen(model, 3))
    again = checkpoint_tree.flatten(_frozen(model, 3))
    other = checkpoint_tree.flatten(_frozen(model, 4))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    kernels = [v for k, v in first.items() if k.endswith("attention/key/kernel")]
    assert len(kernels) >= 2 and not np.array_equal(kernels[0], kernels[1])
    embedding = "token_embedder/embedding"
    assert not np.array_equal(first[embedding], other[embedding])


def test_one_program_per_kind_of_parameter(monkeypatch):
    compiled = []
    real_jit = random_init.jax.jit
    monkeypatch.setattr(
        random_init.jax, "jit", lambda fn, **kw: compiled.append(fn) or real_jit(fn, **kw)
    )
    drawn = checkpoint_tree.flatten(_frozen(_model(), 0))
    # T5 1.1 small: 8+8 layers, ~130 parameters of ~10 kinds (shape, initializer, dtype).
    assert len(drawn) > 120
    assert len(compiled) <= 12, len(compiled)


def test_sharded_and_cast_inside_the_draw():
    mesh = partitioning.make_mesh(4)
    model = _model("tiny", num_heads=4)
    frozen = _frozen(model, 0, mesh, frozen_dtype="bfloat16")
    flat = checkpoint_tree.flatten(frozen)
    assert flat["encoder/layers_0/attention/query/kernel"].dtype == jnp.bfloat16
    assert flat["encoder/encoder_norm/scale"].dtype == jnp.float32  # norms keep float32
    assert flat["token_embedder/embedding"].dtype == jnp.bfloat16  # cast after the prompt's init
    shardings = partitioning.params_shardings(params.abstract_params(model, LENGTHS), mesh)
    wanted = checkpoint_tree.flatten(optimizers.split_params(shardings, "prompt")[1])
    for name, array in flat.items():
        assert array.sharding.is_equivalent_to(wanted[name], array.ndim), name


def test_a_frozen_parameter_without_recorded_initializer_falls_back_to_one_program():
    """A TRAINABLE_PARAMS_REGEX that leaves a prompt parameter frozen: the prompt's parameters
    are not T5 layers, so the whole init runs as one program, as Flax's."""
    model = _model("tiny")
    trainable, frozen = params.initial_params(
        model,
        partitioning.make_mesh(1),
        jax.random.key(0),
        LENGTHS,
        None,
        "nothing_matches",
        allow_no_trainable=True,
        log=None,
    )
    assert trainable == {}
    reference = nn.unbox(model.init_boxed(jax.random.key(0), 8, 4))
    flat, want = checkpoint_tree.flatten(frozen), checkpoint_tree.flatten(reference)
    assert sorted(flat) == sorted(want)
    for name in flat:  # Flax's own values (to float32 rounding: compiled in another program)
        np.testing.assert_allclose(flat[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_recording_is_off_outside_its_context():
    model = _model("tiny")
    init = functools.partial(model.init_boxed, input_length=8, target_length=4)
    with random_init.recording() as draws:
        params.abstract_params(model, LENGTHS)
    assert "encoder/layers_0/attention/query/kernel" in draws
    before = dict(draws)
    jax.eval_shape(init, jax.random.key(0))
    assert draws == before
