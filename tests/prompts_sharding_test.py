"""Every prompt module, jitted over a 2x4 mesh of CPU devices with its parameters split over the
"model" axis, equals the eager result."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

from prompt_tuning import prompts

B, T, H, LAYERS = 4, 6, 16, 3

MODULES = {
    "prompt": prompts.Prompt(3),
    "structured_mlp": prompts.StructuredPrompt(3, num_tasks=2, task_dim=4, hypernetwork="mlp"),
    "structured_low_rank": prompts.StructuredPrompt(3, num_tasks=2, hypernetwork="low_rank"),
    "decomposed": prompts.DecomposedPrompt(3, bottleneck=2),
    "rank_probe": prompts.RankProbePrompt(3),
    "residual": prompts.ResidualPrompt(3, bottleneck=4),
    "idpg_phm": prompts.InstancePrompt(2, hidden_dim=4, layer="phm", phm_rank=2),
    "m_idpg_phm": prompts.InstancePrompt(
        2, hidden_dim=4, layer="phm", phm_rank=4, multi_layer=True, num_layers=LAYERS,
        sharing="L", layer_input="previous",
    ),
    "deep": prompts.DeepPrompt(2, num_layers=LAYERS),
    "bank": prompts.PromptBank(num_prompts=2, length=3),
    "attempt": prompts.AttemptPrompt(
        3, lambda: np.random.default_rng(5).normal(size=(2, 3, H)), rank=4, num_tasks=2
    ),
}  # fmt: skip


def _run(module, tokens, embedded, task_ids):
    outs = [module(tokens, embedded, task_ids)]
    if getattr(module, "per_layer", False):
        hidden = jnp.concatenate([outs[0], embedded], axis=1)  # [B, P+T, H]
        outs += [module.layer_prompt(i, tokens, hidden, task_ids) for i in range(1, LAYERS)]
    return jnp.stack(outs)  # [layers, B, P, H]


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, size=(B, T)).astype(np.int32)
    tokens[1, 3:] = 0
    embedded = rng.normal(size=(B, T, H)).astype(np.float32)
    return jnp.asarray(tokens), jnp.asarray(embedded), jnp.array([0, 1, 1, 0], jnp.int32)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_jit_and_sharded_match_eager(name):
    module = MODULES[name]
    batch = _batch()
    boxed = nn.init(lambda m, *a: _run(m, *a), module)(jax.random.key(0), *batch)
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
        assert isinstance(leaf, nn.LogicallyPartitioned)
        assert set(leaf.names) <= set(prompts.PROMPT_LOGICAL_AXES), leaf.names
    variables = nn.unbox(boxed)
    apply = nn.apply(lambda m, *a: _run(m, *a), module)
    eager = apply(variables, *batch)
    assert eager.shape[1] == B and eager.shape[-1] == H

    # A real layout: the width H of every prompt parameter split over the 4 "model" devices
    # (tensor-parallel prompts), the batch over the 2 "data" rows; XLA must insert the gathers.
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    rules = [
        (axis, "model" if axis == "prompt_embed" else None) for axis in prompts.PROMPT_LOGICAL_AXES
    ]
    param_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    placed = jax.device_put(variables, param_shardings)
    split = [
        jax.tree_util.keystr(path)
        for path, x in jax.tree_util.tree_leaves_with_path(placed)
        if x.sharding.shard_shape(x.shape) != x.shape
    ]
    assert split or name == "rank_probe", "no parameter of the module is actually sharded"
    data = NamedSharding(mesh, PS("data"))
    sharded_batch = jax.device_put(batch, data)
    out = jax.jit(apply, in_shardings=(param_shardings, data, data, data))(placed, *sharded_batch)
    np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_parameter_gets_a_gradient(name):
    module = MODULES[name]
    batch = _batch()
    variables = nn.unbox(nn.init(lambda m, *a: _run(m, *a), module)(jax.random.key(0), *batch))
    apply = nn.apply(lambda m, *a: _run(m, *a), module)
    weights = jax.random.normal(jax.random.key(1), apply(variables, *batch).shape)
    grads = jax.grad(lambda v: jnp.sum(apply(v, *batch) * weights))(variables)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(grad).max()) > 0, jax.tree_util.keystr(path)
