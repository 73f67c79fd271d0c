"""Parameter counts of the T5 presets against published numbers and the Flax parameter tree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network


def flax_param_count(config: t5_config.T5Config) -> int:
    """Parameters of the initialised network, from shapes only (`jax.eval_shape`)."""
    model = network.EncoderDecoder(config)
    tokens = jnp.ones((1, 2), jnp.int32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens, tokens))
    return sum(leaf.size for leaf in jax.tree.leaves(nn.unbox(variables["params"])))


@pytest.mark.parametrize(
    ("prompt_length", "total"),
    # Lester et al. (2021), Table 4, T5-XXL rows: total = frozen T5 + prompt (P * 4096).
    [(1, 11_135_336_448), (5, 11_135_352_832), (100, 11_135_741_952), (150, 11_135_946_752)],
)
def test_xxl_count_matches_lester_table_4(prompt_length, total):
    config = t5_config.t5_1_1("xxl")
    assert t5_config.num_params(config) + prompt_length * config.emb_dim == total


def test_original_t5_small_matches_the_published_count():
    # The public t5-small checkpoint (tied embedding of 32,128 rows) has 60,506,624 parameters.
    config = t5_config.t5_original("small")
    assert t5_config.num_params(config) == 60_506_624
    assert flax_param_count(config) == 60_506_624


@pytest.mark.parametrize(
    "config",
    [
        t5_config.tiny(),
        t5_config.tiny(mlp_activations=("relu",), logits_via_embedding=True),
        t5_config.tiny(num_encoder_layers=3, num_decoder_layers=1),
        t5_config.t5_1_1("small"),
    ],
    ids=["tiny", "tiny_original", "tiny_3_1", "t5_1_1_small"],
)
def test_num_params_equals_the_flax_tree(config):
    assert flax_param_count(config) == t5_config.num_params(config)


def test_presets_only_override_fields_and_reject_unknown_sizes():
    base = t5_config.t5_1_1("base", dropout_rate=0.1)
    assert (base.emb_dim, base.mlp_dim, base.num_heads, base.num_encoder_layers) == (
        768,
        2048,
        12,
        12,
    )
    assert base.dropout_rate == 0.1 and base.mlp_activations == ("gelu", "linear")
    original = t5_config.t5_original("3b")
    assert original.logits_via_embedding and original.mlp_activations == ("relu",)
    with pytest.raises(ValueError, match="xxxl"):
        t5_config.t5_1_1("xxxl")
    with pytest.raises(ValueError, match="xxl"):
        t5_config.t5_original("xxl")
