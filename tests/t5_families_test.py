"""Every T5 family (Flan-T5, mT5, ByT5, UMT5) against transformers' own classes.

Tiny random models at odd sizes (3 heads of 5, H=13, F=22; ByT5 with an encoder three times deeper
than the decoder) are built with `T5ForConditionalGeneration`, `MT5ForConditionalGeneration` and
`UMT5ForConditionalGeneration`; our network must give their logits and, for a prompt prepended to
the encoder input, torch autograd's gradient on `inputs_embeds`, loaded from their transformers
folder and from a T5X checkpoint in T5X's own layout for the family (UMT5: T5X scalable_t5's
scanned layers, written here from the transformers tensors).
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.t5 import checkpoints, decoding, hf_format, network
from prompt_tuning.t5 import config as configs

# transformers otherwise imports TensorFlow too (about 8 s on a busy 2-core machine).
os.environ.setdefault("USE_TF", "0")

FAMILIES = ("flan_t5", "mt5", "byt5", "umt5")
INPUTS = np.array([[5, 9, 3, 12, 7, 1], [4, 22, 1, 0, 0, 0]], np.int32)
TARGETS = np.array([[8, 3, 11, 1], [6, 1, 2, 9]], np.int32)
DECODER_INPUTS = np.concatenate([np.zeros((2, 1), np.int32), TARGETS[:, :-1]], axis=1)
PROMPT_LENGTH = 3


def _hf_model(family: str, tied: bool = False, seed: int = 0):
    """A tiny transformers model of `family` with every weight random (norm scales too)."""
    import torch
    import transformers

    sizes = dict(
        vocab_size=384 if family == "byt5" else 71,
        d_model=13,
        d_kv=5,
        d_ff=22,
        num_layers=3,
        num_decoder_layers=1 if family == "byt5" else 2,
        num_heads=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=tied,
        dropout_rate=0.0,
    )
    config_class, model_class = {
        "flan_t5": (transformers.T5Config, transformers.T5ForConditionalGeneration),
        "byt5": (transformers.T5Config, transformers.T5ForConditionalGeneration),
        "mt5": (transformers.MT5Config, transformers.MT5ForConditionalGeneration),
        "umt5": (transformers.UMT5Config, transformers.UMT5ForConditionalGeneration),
    }[family]
    torch.manual_seed(seed)
    model = model_class(config_class(**sizes)).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "layer_norm" in name:
                weight.copy_(1.0 + 0.1 * torch.randn_like(weight))
            else:
                weight.copy_(0.3 * torch.randn_like(weight))
    return model


def _hf_logits(model, inputs=INPUTS, prompt=None):
    """transformers' logits `[B, S, V]`; with `prompt` `[P, H]` (a torch tensor) prepended to the
    embedded inputs through `inputs_embeds`."""
    import torch

    ids = torch.tensor(inputs, dtype=torch.long)
    mask = torch.tensor(inputs > 0, dtype=torch.long)
    kwargs = {"input_ids": ids}
    if prompt is not None:
        embedded = model.get_input_embeddings()(ids)  # [B, T, H]
        batch = prompt[None].expand(ids.shape[0], -1, -1)  # [B, P, H]
        kwargs = {"inputs_embeds": torch.cat([batch, embedded], dim=1)}
        mask = torch.cat([torch.ones(ids.shape[0], prompt.shape[0], dtype=torch.long), mask], 1)
    decoder_ids = torch.tensor(DECODER_INPUTS, dtype=torch.long)
    return model(**kwargs, attention_mask=mask, decoder_input_ids=decoder_ids).logits


def _our_logits(config, params, prompt=None):
    model = network.EncoderDecoder(config, prompt=prompt)
    return model.apply(
        {"params": params}, INPUTS, DECODER_INPUTS, TARGETS, enable_dropout=False
    )  # [B, S, V]


def _assert_close(ours, want):
    want = np.asarray(want)
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-5, atol=1e-5 * scale)


def _saved(family, tmp_path, tied=False):
    model = _hf_model(family, tied)
    folder = tmp_path / f"{family}_hf"
    model.save_pretrained(folder)
    return model, folder


# ----------------------------------------------------------------------------------------------
# Transformers folders.


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_folder_needs_no_config_and_gives_its_logits(tmp_path, family):
    import torch

    model, folder = _saved(family, tmp_path)
    config, params = checkpoints.load_checkpoint(folder)
    assert config.relative_attention_per_layer == (family == "umt5")
    assert (config.num_encoder_layers, config.num_decoder_layers) == (
        (3, 1) if family == "byt5" else (3, 2)
    )
    assert config.mlp_activations == ("gelu", "linear") and not config.logits_via_embedding
    assert configs.num_params(config) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        want = _hf_logits(model).numpy()
    _assert_close(_our_logits(config, params), want)


def test_tied_umt5_scales_its_logits_as_transformers(tmp_path):
    import torch

    model, folder = _saved("umt5", tmp_path, tied=True)
    config, params = checkpoints.load_checkpoint(folder)
    assert config.logits_via_embedding and config.scale_tied_logits
    with torch.no_grad():
        want = _hf_logits(model).numpy()
    _assert_close(_our_logits(config, params), want)


class _FixedPrompt(nn.Module):
    """A `[P, H]` prompt broadcast over the batch (the simplest prompt the encoder takes)."""

    init_value: np.ndarray

    @nn.compact
    def __call__(self, tokens, embedded, task_ids=None):
        prompt = self.param("prompt", lambda _: jnp.asarray(self.init_value))  # [P, H]
        return jnp.broadcast_to(prompt, (embedded.shape[0], *prompt.shape))  # [B, P, H]


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_gradient_matches_torch_autograd_on_inputs_embeds(tmp_path, family):
    import torch

    model, folder = _saved(family, tmp_path)
    config, params = checkpoints.load_checkpoint(folder)
    rng = np.random.default_rng(1)
    prompt_value = rng.normal(size=(PROMPT_LENGTH, config.emb_dim)).astype(np.float32)
    weights = rng.normal(size=(*TARGETS.shape, config.vocab_size)).astype(np.float32)

    def loss(prompt_params):
        tree = dict(params, encoder=dict(params["encoder"], prompt=prompt_params))
        logits = _our_logits(config, tree, _FixedPrompt(prompt_value))
        return jnp.sum(logits * weights)

    ours = jax.grad(loss)({"prompt": jnp.asarray(prompt_value)})["prompt"]
    prompt = torch.tensor(prompt_value, requires_grad=True)
    torch_loss = (_hf_logits(model, prompt=prompt) * torch.tensor(weights)).sum()
    torch_loss.backward()
    want = prompt.grad.numpy()
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(
        float(loss({"prompt": jnp.asarray(prompt_value)})), float(torch_loss.detach()), rtol=1e-5
    )


def test_umt5_cached_decoding_gives_transformers_logits_at_every_step(tmp_path):
    """One token at a time through the decode cache, each layer's own table at that position."""
    import torch

    model, folder = _saved("umt5", tmp_path)
    config, params = checkpoints.load_checkpoint(folder)
    ours = network.EncoderDecoder(config)
    encoded, mask = ours.apply({"params": params}, INPUTS, method="encode")
    cache = decoding.init_cache(ours, params, encoded, mask, DECODER_INPUTS.shape[1])
    steps = []
    for i in range(DECODER_INPUTS.shape[1]):
        logits, cache = decoding.decode_step(
            ours, params, cache, encoded, mask, jnp.asarray(DECODER_INPUTS[:, i])
        )
        steps.append(logits)
    with torch.no_grad():
        want = _hf_logits(model).numpy()  # teacher-forced: position i saw DECODER_INPUTS[:, :i+1]
    _assert_close(jnp.stack(steps, axis=1), want)
    greedy = decoding.greedy_decode(ours, params, INPUTS, 6)
    with torch.no_grad():
        generated = model.generate(
            input_ids=torch.tensor(INPUTS, dtype=torch.long),
            attention_mask=torch.tensor(INPUTS > 0, dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            num_beams=1,
            eos_token_id=1,
            pad_token_id=0,
            decoder_start_token_id=0,
        ).numpy()[:, 1:]  # without the start token
    generated = np.pad(generated, ((0, 0), (0, 6 - generated.shape[1])))
    np.testing.assert_array_equal(np.asarray(greedy), generated)


def test_umt5_written_as_transformers_folder_loads_in_transformers(tmp_path):
    import torch
    import transformers

    model, folder = _saved("umt5", tmp_path)
    config, params = checkpoints.load_checkpoint(folder)
    out = tmp_path / "written"
    checkpoints.save_hf_checkpoint(params, config, out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "umt5"
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == "UMT5ForConditionalGeneration"
    with torch.no_grad():
        np.testing.assert_array_equal(_hf_logits(reloaded).numpy(), _hf_logits(model).numpy())


# ----------------------------------------------------------------------------------------------
# T5X checkpoints in each family's T5X layout.


@pytest.mark.parametrize("family", ("flan_t5", "mt5", "byt5"))
def test_t5x_checkpoint_of_t5_layout_families_gives_transformers_logits(tmp_path, family):
    """Flan-T5, mT5 and ByT5 are T5X's t5x/examples/t5 network: T5 1.1's parameter names."""
    import torch

    model, folder = _saved(family, tmp_path)
    config, params = checkpoints.load_checkpoint(folder)
    checkpoints.save_t5x_checkpoint(params, tmp_path / "checkpoint_7")
    loaded_config, loaded = checkpoints.load_checkpoint(tmp_path / "checkpoint_7")
    for field in ("vocab_size", "num_encoder_layers", "num_decoder_layers", "num_heads"):
        assert getattr(loaded_config, field) == getattr(config, field), field
    with torch.no_grad():
        want = _hf_logits(model).numpy()
    _assert_close(_our_logits(config, loaded), want)


def test_umt5_orbax_checkpoint_gives_transformers_logits(tmp_path):
    """Our per-layer names in an orbax (new T5X) checkpoint: read and inferred as UMT5."""
    import orbax.checkpoint as ocp
    import torch

    model, folder = _saved("umt5", tmp_path)
    config, params = checkpoints.load_checkpoint(folder)
    item = tmp_path / "checkpoint_3" / "state"
    ocp.PyTreeCheckpointer().save(item, {"target": params, "state": {"step": np.int32(3)}})
    inferred, loaded = checkpoints.load_checkpoint(tmp_path / "checkpoint_3")
    assert inferred.relative_attention_per_layer
    assert inferred == config.replace(relative_attention_max_distance=128, dropout_rate=0.0)
    with torch.no_grad():
        want = _hf_logits(model).numpy()
    _assert_close(_our_logits(config, loaded), want)


def _scalable_t5_tree(state: dict, hf_config, scanned: bool) -> dict:
    """UMT5's tensors in T5X scalable_t5's layout, built from the transformers state dict.

    T5X `t5x/examples/scalable_t5/network.py`: attention kernels `DenseGeneral` over (heads, kv),
    `[H, N, K]` and out `[N, K, H]`; every layer's `relpos_bias/rel_embedding [N, buckets]`; with
    `scan_layers=True` one `encoder/encoder` (`decoder/decoder`) module with the layer axis at 1.
    """
    n, k, h = hf_config.num_heads, hf_config.d_kv, hf_config.d_model
    t = lambda name: state[name].T  # noqa: E731  (torch [out, in] -> [in, out])

    def attention(prefix):
        q, kk, v = (t(f"{prefix}.{x}.weight").reshape(h, n, k) for x in "qkv")
        o = t(f"{prefix}.o.weight").reshape(n, k, h)
        return {"query": q, "key": kk, "value": v, "out": o}

    def layer(stack, i):
        block = f"{stack}.block.{i}.layer"
        out = {}
        if stack == "encoder":
            parts = {"attention": f"{block}.0.SelfAttention"}
            norms = ["pre_attention_layer_norm", "pre_mlp_layer_norm"]
        else:
            parts = {
                "self_attention": f"{block}.0.SelfAttention",
                "encoder_decoder_attention": f"{block}.1.EncDecAttention",
            }
            norms = [
                "pre_self_attention_layer_norm",
                "pre_cross_attention_layer_norm",
                "pre_mlp_layer_norm",
            ]
        for name, prefix in parts.items():
            out.update({f"{name}/{r}/kernel": a for r, a in attention(prefix).items()})
        for j, norm in enumerate(norms):
            out[f"{norm}/scale"] = state[f"{block}.{j}.layer_norm.weight"]
        mlp = f"{block}.{len(norms) - 1}.DenseReluDense"
        for dense in ("wi_0", "wi_1", "wo"):
            out[f"mlp/{dense}/kernel"] = t(f"{mlp}.{dense}.weight")
        bias = state[f"{block}.0.SelfAttention.relative_attention_bias.weight"]  # [B, N]
        out["relpos_bias/rel_embedding"] = bias.T  # [N, B]
        return out

    flat = {
        "token_embedder/embedding": state["shared.weight"],
        "encoder/encoder_norm/scale": state["encoder.final_layer_norm.weight"],
        "decoder/decoder_norm/scale": state["decoder.final_layer_norm.weight"],
        "decoder/logits_dense/kernel": t("lm_head.weight"),
    }
    for stack, count in (
        ("encoder", hf_config.num_layers),
        ("decoder", hf_config.num_decoder_layers),
    ):
        layers = [layer(stack, i) for i in range(count)]
        for name in layers[0]:
            if scanned:
                stacked = np.stack([one[name] for one in layers], axis=1)  # layer axis 1
                flat[f"{stack}/{stack}/{name}"] = stacked
            else:
                for i, one in enumerate(layers):
                    flat[f"{stack}/layers_{i}/{name}"] = one[name]
    return checkpoints.unflatten({name: np.ascontiguousarray(a) for name, a in flat.items()})


@pytest.mark.parametrize("scanned", [True, False])
def test_umt5_t5x_scalable_checkpoint_gives_transformers_logits(tmp_path, scanned):
    import torch

    model = _hf_model("umt5")
    state = {name: p.detach().numpy() for name, p in model.state_dict().items()}
    tree = _scalable_t5_tree(state, model.config, scanned)
    if scanned:
        assert tree["encoder"]["encoder"]["attention"]["query"]["kernel"].shape == (13, 3, 3, 5)
        assert tree["encoder"]["encoder"]["relpos_bias"]["rel_embedding"].shape == (3, 3, 8)
    path = tmp_path / "checkpoint_1000000"
    checkpoints.save_t5x_checkpoint(tree, path)
    config, params = checkpoints.load_checkpoint(path)
    assert config.relative_attention_per_layer
    assert (config.num_encoder_layers, config.num_decoder_layers) == (3, 2)
    assert (config.num_heads, config.head_dim) == (3, 5)
    config = config.replace(relative_attention_max_distance=20)  # shapes cannot tell it
    with torch.no_grad():
        want = _hf_logits(model).numpy()
    _assert_close(_our_logits(config, params), want)
    one = checkpoints.read_variable(path, "decoder/layers_1/relpos_bias/rel_embedding")
    np.testing.assert_array_equal(
        one, state["decoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"].T
    )


def test_umt5_scanned_checkpoint_loads_sharded_by_layer(tmp_path):
    from prompt_tuning.t5 import sharded_loading

    model = _hf_model("umt5")
    state = {name: p.detach().numpy() for name, p in model.state_dict().items()}
    path = tmp_path / "checkpoint_1"
    checkpoints.save_t5x_checkpoint(_scalable_t5_tree(state, model.config, True), path)
    _, expected = checkpoints.load_checkpoint(path)
    flat = checkpoints.flatten(expected)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    config, loaded, stats = sharded_loading.load_checkpoint_sharded(
        path, {name: device for name in flat}
    )
    assert config.relative_attention_per_layer
    for name, array in checkpoints.flatten(loaded).items():
        np.testing.assert_array_equal(np.asarray(array), flat[name], err_msg=name)
    assert stats.num_arrays == len(flat)


# ----------------------------------------------------------------------------------------------
# config.json: model types, defaults, refusals, and mismatches with a gin model file.


def _hf_json(family="t5", **fields):
    base = {"model_type": family, "vocab_size": 71, "d_model": 13, "d_kv": 5, "d_ff": 22}
    return {**base, "num_layers": 3, "num_heads": 3, **fields}


def test_missing_fields_take_each_model_types_transformers_defaults():
    import transformers

    for family, config_class in (
        ("t5", transformers.T5Config),
        ("mt5", transformers.MT5Config),
        ("umt5", transformers.UMT5Config),
    ):
        theirs = config_class()
        ours = hf_format.config_from_hf(_hf_json(family))
        assert ours.logits_via_embedding == theirs.tie_word_embeddings, family
        assert ours.mlp_activations == (
            ("gelu", "linear") if theirs.is_gated_act else (theirs.dense_act_fn,)
        ), family
        assert ours.relative_attention_per_layer == (family == "umt5")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"model_type": "longt5"}, r"model_type='longt5'.*'mt5', 't5', 'umt5'"),
        ({"feed_forward_proj": "gelu"}, r"feed_forward_proj 'gelu'.*'gated-gelu'"),
        ({"feed_forward_proj": "gated-silu"}, r"feed_forward_proj 'gated-silu'"),
        ({"is_encoder_decoder": False}, r"is_encoder_decoder=false"),
    ],
)
def test_unsupported_configs_are_refused_naming_the_field(fields, message):
    with pytest.raises(checkpoints.CheckpointError, match=message):
        hf_format.config_from_hf(_hf_json(**fields))


@pytest.mark.parametrize(
    "field, value",
    [
        ("relative_attention_per_layer", False),
        ("relative_attention_max_distance", 128),
        ("num_decoder_layers", 3),
        ("vocab_size", configs.UMT5_VOCAB_SIZE),
    ],
)
def test_a_gin_config_that_differs_from_config_json_names_the_field(tmp_path, field, value):
    _, folder = _saved("umt5", tmp_path)
    found = hf_format.read_config(folder)
    wrong = found.replace(**{field: value})
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load_checkpoint(folder, config=wrong)
    message = str(error.value)
    assert f"T5Config.{field} is {value!r}" in message
    assert f"{field}={getattr(found, field)!r}" in message and str(folder) in message
    # Dropout and dtypes are run settings, not architecture: they may differ.
    fine = found.replace(dropout_rate=0.3, dtype="bfloat16")
    assert checkpoints.load_checkpoint(folder, config=fine)[0] is fine


def test_per_layer_tables_have_scalable_t5_names_and_remat_keeps_gradients():
    config = configs.tiny(relative_attention_per_layer=True, num_decoder_layers=1)
    model = network.EncoderDecoder(config)
    params = nn.unbox(
        model.init(jax.random.key(0), INPUTS, DECODER_INPUTS, TARGETS, enable_dropout=False)
    )
    shapes = {name: a.shape for name, a in checkpoints.flatten(params["params"]).items()}
    assert shapes == checkpoints.expected_shapes(config)
    assert shapes["decoder/layers_0/relpos_bias/rel_embedding"] == (4, 32)
    assert "encoder/relpos_bias/rel_embedding" not in shapes
    assert configs.num_params(config) == sum(np.prod(s) for s in shapes.values())

    def loss(p, remat_policy):
        remat_model = network.EncoderDecoder(config.replace(remat_policy=remat_policy))
        return remat_model.apply(p, INPUTS, DECODER_INPUTS, TARGETS, enable_dropout=False).sum()

    plain = jax.grad(loss)(params, "none")
    for policy in ("full", "dots"):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            jax.grad(loss)(params, policy),
            plain,
        )
