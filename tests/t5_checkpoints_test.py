"""Tests for prompt_tuning.t5.checkpoints / hf_format / t5x_format.

References: the real T5X fixture (read independently with json + gzip + msgpack), transformers'
T5ForConditionalGeneration 4.x (its saved files, its reloading of ours, its logits), orbax.
"""

import gzip
import importlib.util
import json
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import pytest

from prompt_tuning.t5 import checkpoints, hf_format, network, orbax_format
from prompt_tuning.t5 import config as configs

# transformers otherwise imports TensorFlow too (about 8 s on a busy 2-core machine).
os.environ.setdefault("USE_TF", "0")

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "t5x_t5_1_1_tiny"
CKPT = FIXTURE / "checkpoint_3"
needs_fixture = pytest.mark.skipif(not CKPT.exists(), reason="T5X fixture absent")


# ----------------------------------------------------------------------------------------------
# Helpers.


def _flat(params):
    return checkpoints.flatten(params)


def _hf_model(tied: bool, gated: bool, seed: int = 0):
    """A tiny transformers T5 with every weight random (norm scales too)."""
    import torch
    import transformers

    hf_config = transformers.T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=tied,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
    )
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(hf_config).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "layer_norm" in name:
                weight.copy_(1.0 + 0.1 * torch.randn_like(weight))
            else:
                weight.copy_(0.3 * torch.randn_like(weight))
    return model


def _hf_state(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}


def _random_params(config, seed: int = 0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shapes = checkpoints.expected_shapes(config)
    flat = {name: rng.normal(size=shape).astype(dtype) for name, shape in shapes.items()}
    return checkpoints.unflatten(flat)


def _assert_trees_equal(a, b):
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name].dtype == fb[name].dtype, name
        np.testing.assert_array_equal(np.asarray(fa[name]), np.asarray(fb[name]), err_msg=name)


# ----------------------------------------------------------------------------------------------
# The real T5X fixture.


def _inline_array(ext_data: bytes) -> np.ndarray:
    shape, dtype, buffer = msgpack.unpackb(ext_data, raw=True)
    return np.frombuffer(buffer, np.dtype(dtype.decode())).reshape(shape)


@needs_fixture
def test_fixture_loads_with_design_names_and_shapes():
    config, params = checkpoints.load_checkpoint(CKPT)
    flat = _flat(params)
    # README: embedding dim 4, vocab 32128, 2 + 2 layers, untied logits_dense.
    assert (config.vocab_size, config.emb_dim) == (32128, 4)
    assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 2)
    assert not config.logits_via_embedding and config.mlp_activations == ("gelu", "linear")
    assert flat["token_embedder/embedding"].shape == (32128, 4)
    assert flat["decoder/logits_dense/kernel"].shape == (4, 32128)
    assert flat["encoder/layers_1/mlp/wi_1/kernel"].shape == (4, 8)
    assert flat["decoder/layers_1/encoder_decoder_attention/out/kernel"].shape == (4, 4)
    # rel_embedding is [N, buckets] = [2, 4]: N = 2, so K = (N*K) / N = 4 / 2.
    assert (config.num_heads, config.head_dim, config.relative_attention_num_buckets) == (2, 2, 4)
    # Encoder layer: 2 norms + 4 attention + 3 MLP kernels; decoder layer: 3 + 8 + 3; plus final
    # norm and relpos per stack, the embedding and logits_dense.
    assert len(flat) == 2 * 9 + 2 + 2 * 14 + 2 + 1 + 1
    assert all(a.dtype == np.float32 for a in flat.values())


@needs_fixture
def test_fixture_values_match_independent_reads():
    _, params = checkpoints.load_checkpoint(CKPT)
    flat = _flat(params)
    # A zarr array by hand: .zarray + one gzip chunk per 4096-row block of the embedding.
    folder = CKPT / "target.token_embedder.embedding"
    meta = json.loads((folder / ".zarray").read_text())
    rows = meta["chunks"][0]
    chunk = np.frombuffer(gzip.decompress((folder / "1.0").read_bytes()), np.dtype(meta["dtype"]))
    np.testing.assert_array_equal(
        flat["token_embedder/embedding"][rows : 2 * rows], chunk.reshape(meta["chunks"])
    )
    query = CKPT / "target.encoder.layers_0.attention.query.kernel"
    q_chunk = np.frombuffer(gzip.decompress((query / "0.0").read_bytes()), "<f4").reshape(4, 4)
    np.testing.assert_array_equal(flat["encoder/layers_0/attention/query/kernel"], q_chunk)
    # An inline array straight from msgpack.
    raw = msgpack.unpackb((CKPT / "checkpoint").read_bytes(), raw=False)
    target = raw["optimizer"]["target"]
    relpos = _inline_array(target["decoder"]["relpos_bias"]["rel_embedding"].data)
    np.testing.assert_array_equal(flat["decoder/relpos_bias/rel_embedding"], relpos)
    scale = _inline_array(target["encoder"]["layers_1"]["pre_mlp_layer_norm"]["scale"].data)
    np.testing.assert_array_equal(flat["encoder/layers_1/pre_mlp_layer_norm/scale"], scale)


@needs_fixture
def test_fixture_dtype_cast_and_config_override():
    config, params32 = checkpoints.load_checkpoint(CKPT)
    given = config.replace(relative_attention_max_distance=16, dropout_rate=0.1)
    config16, params16 = checkpoints.load_checkpoint(CKPT, config=given, dtype=jnp.bfloat16)
    assert config16 is given
    for name, value in _flat(params16).items():
        assert value.dtype == jnp.bfloat16, name
        np.testing.assert_array_equal(value, _flat(params32)[name].astype(jnp.bfloat16))


# ----------------------------------------------------------------------------------------------
# Hugging Face folders.


def _check_every_hf_tensor_mapped(hf_state, params, expected_count):
    """Each HF tensor equals exactly one of our leaves, itself or transposed (random weights)."""
    ours = list(_flat(params).values())
    assert len(ours) == expected_count
    used = set()
    for name, tensor in hf_state.items():
        if name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue
        hits = [
            i
            for i, leaf in enumerate(ours)
            if (leaf.shape == tensor.shape and np.array_equal(leaf, tensor))
            or (leaf.shape == tensor.T.shape and np.array_equal(leaf, tensor.T))
        ]
        assert len(hits) == 1, name
        used.update(hits)
    assert used == set(range(len(ours)))


def test_hf_safetensors_t5_1_1_loads_untied(tmp_path):
    model = _hf_model(tied=False, gated=True)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config, params = checkpoints.load_checkpoint(tmp_path)
    expected = configs.T5Config(
        vocab_size=64,
        emb_dim=16,
        num_heads=3,
        head_dim=4,
        mlp_dim=24,
        num_encoder_layers=2,
        num_decoder_layers=3,
        mlp_activations=("gelu", "linear"),
        dropout_rate=0.0,
        logits_via_embedding=False,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
    )
    assert config == expected
    state = _hf_state(model)
    flat = _flat(params)
    np.testing.assert_array_equal(flat["decoder/logits_dense/kernel"], state["lm_head.weight"].T)
    np.testing.assert_array_equal(
        flat["decoder/relpos_bias/rel_embedding"],
        state["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T,
    )
    np.testing.assert_array_equal(
        flat["decoder/layers_2/pre_cross_attention_layer_norm/scale"],
        state["decoder.block.2.layer.1.layer_norm.weight"],
    )
    np.testing.assert_array_equal(
        flat["encoder/layers_1/mlp/wi_1/kernel"],
        state["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"].T,
    )
    _check_every_hf_tensor_mapped(state, params, len(checkpoints.expected_shapes(expected)))


def test_hf_pytorch_bin_original_t5_loads_tied_and_scaled(tmp_path):
    model = _hf_model(tied=True, gated=False)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").exists()
    config, params = checkpoints.load_checkpoint(tmp_path, dtype=np.float16)
    assert config.mlp_activations == ("relu",)
    assert config.logits_via_embedding and config.scale_tied_logits
    flat = _flat(params)
    assert "decoder/logits_dense/kernel" not in flat
    assert all(v.dtype == np.float16 for v in flat.values())
    state = _hf_state(model)
    np.testing.assert_array_equal(
        flat["encoder/layers_0/mlp/wi/kernel"],
        state["encoder.block.0.layer.1.DenseReluDense.wi.weight"].T.astype(np.float16),
    )
    state16 = {k: v.astype(np.float16) for k, v in state.items() if k != "lm_head.weight"}
    _check_every_hf_tensor_mapped(state16, params, len(checkpoints.expected_shapes(config)))


def test_hf_transformers5_layout_is_tied_unscaled(tmp_path):
    model = _hf_model(tied=True, gated=True)
    state = {k: v for k, v in _hf_state(model).items() if "embed_tokens" not in k}
    state.pop("lm_head.weight", None)
    hf_format.write_safetensors(str(tmp_path / "model.safetensors"), state)
    hf_config = model.config.to_dict()
    hf_config.update(tie_word_embeddings=True, scale_decoder_outputs=False)
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    config, params = checkpoints.load_checkpoint(tmp_path)
    assert config.logits_via_embedding and not config.scale_tied_logits
    assert "logits_dense" not in params["decoder"]
    np.testing.assert_array_equal(params["token_embedder"]["embedding"], state["shared.weight"])


def test_hf_bfloat16_safetensors_and_sharded_index(tmp_path):
    config = configs.tiny(num_encoder_layers=1, num_decoder_layers=1)
    params = _random_params(config, dtype=ml_dtypes.bfloat16)
    state = hf_format.params_to_hf_state_dict(params, config)
    names = sorted(state)
    half = len(names) // 2
    shards = {"a.safetensors": names[:half], "b.safetensors": names[half:]}
    for file, keys in shards.items():
        hf_format.write_safetensors(str(tmp_path / file), {k: state[k] for k in keys})
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(hf_format.config_to_hf(config)))
    loaded_config, loaded = checkpoints.load_checkpoint(tmp_path)
    assert loaded_config.mlp_dim == config.mlp_dim
    _assert_trees_equal(loaded, params)


@pytest.mark.parametrize("tied", [False, True])
def test_save_hf_checkpoint_reloads_in_transformers(tmp_path, tied):
    import transformers

    model = _hf_model(tied=tied, gated=not tied)
    model.save_pretrained(tmp_path / "src")
    config, params = checkpoints.load_checkpoint(tmp_path / "src")
    checkpoints.save_hf_checkpoint(params, config, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # No temporary folder left behind.
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert reloaded.config.tie_word_embeddings == tied
    original, again = _hf_state(model), _hf_state(reloaded)
    assert sorted(original) == sorted(again)
    for name in original:
        np.testing.assert_array_equal(original[name], again[name], err_msg=name)


def test_save_hf_tied_unscaled_for_transformers4_writes_equivalent_lm_head(tmp_path):
    config = configs.tiny(logits_via_embedding=True, scale_tied_logits=False)
    params = _random_params(config)
    checkpoints.save_hf_checkpoint(params, config, tmp_path / "v4", transformers_version=4)
    checkpoints.save_hf_checkpoint(params, config, tmp_path / "v5", transformers_version=5)
    v4 = json.loads((tmp_path / "v4" / "config.json").read_text())
    v5 = json.loads((tmp_path / "v5" / "config.json").read_text())
    assert v4["tie_word_embeddings"] is False
    assert (v5["tie_word_embeddings"], v5["scale_decoder_outputs"]) == (True, False)
    config4, params4 = checkpoints.load_checkpoint(tmp_path / "v4")
    np.testing.assert_array_equal(
        params4["decoder"]["logits_dense"]["kernel"], params["token_embedder"]["embedding"].T
    )
    config5, params5 = checkpoints.load_checkpoint(tmp_path / "v5")
    assert config5.logits_via_embedding and not config5.scale_tied_logits
    _assert_trees_equal(params5, params)
    with pytest.raises(checkpoints.CheckpointError, match="already exists"):
        checkpoints.save_hf_checkpoint(params, config, tmp_path / "v5")


# ----------------------------------------------------------------------------------------------
# Against the Flax network (prompt_tuning/t5/network.py).


def test_loaded_tree_matches_network_init_structure(tmp_path):
    import flax.linen as nn

    model = _hf_model(tied=False, gated=True)
    model.save_pretrained(tmp_path)
    config, params = checkpoints.load_checkpoint(tmp_path)
    tokens = jnp.ones((1, 4), jnp.int32)
    shapes = jax.eval_shape(
        lambda: network.EncoderDecoder(config).init(
            jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False
        )
    )
    expected = nn.unbox(shapes["params"])
    assert jax.tree.structure(expected) == jax.tree.structure(params)
    for (path, want), got in zip(
        jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(params), strict=True
    ):
        assert want.shape == got.shape, jax.tree_util.keystr(path)


@pytest.mark.parametrize("tied", [False, True])
def test_network_logits_on_loaded_params_match_transformers(tmp_path, tied):
    import torch

    model = _hf_model(tied=tied, gated=not tied, seed=1)
    model.save_pretrained(tmp_path)
    config, params = checkpoints.load_checkpoint(tmp_path)
    inputs = np.array([[5, 9, 3, 12, 7, 1], [4, 22, 1, 0, 0, 0]], np.int32)
    targets = np.array([[8, 3, 11, 1], [6, 1, 2, 9]], np.int32)
    decoder_inputs = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
    logits = network.EncoderDecoder(config).apply(
        {"params": params}, inputs, decoder_inputs, targets, enable_dropout=False
    )
    with torch.no_grad():
        want = model(
            input_ids=torch.tensor(inputs, dtype=torch.long),
            attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
            decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long),
        ).logits.numpy()
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Our legacy T5X writer, read without our reader: by hand (msgpack + zarr .zarray + gzip chunks, as
# T5X's tensorstore writes them) and, when T5X is importable, with T5X's own reader.

_ZARR_DTYPES = {"bfloat16": ml_dtypes.bfloat16}


def _ext_array(ext: msgpack.ExtType) -> np.ndarray:
    """A flax msgpack ndarray ext (type 1: shape, dtype name, C-order bytes), decoded by hand."""
    assert ext.code == 1
    shape, dtype, buffer = msgpack.unpackb(ext.data, raw=False)
    dtype = _ZARR_DTYPES.get(dtype, dtype)
    return np.frombuffer(buffer, np.dtype(dtype)).reshape(shape)


def _zarr_array(folder: pathlib.Path) -> np.ndarray:
    """A zarr v2 array by hand: `.zarray`, then every gzip chunk file `i.j...` in C order."""
    meta = json.loads((folder / ".zarray").read_text())
    assert meta["compressor"]["id"] == "gzip" and meta["order"] == "C" and meta["filters"] is None
    dtype = np.dtype(_ZARR_DTYPES.get(meta["dtype"], meta["dtype"]))
    shape, chunks = meta["shape"], meta["chunks"]
    out = np.zeros(shape, dtype)
    grid = [range(-(-n // c)) for n, c in zip(shape, chunks, strict=True)]
    separator = meta.get("dimension_separator", ".")
    for index in np.ndindex(*(len(g) for g in grid)):
        raw = gzip.decompress((folder / separator.join(map(str, index))).read_bytes())
        chunk = np.frombuffer(raw, dtype).reshape(chunks)  # edge chunks are stored whole
        where = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape))
        out[where] = chunk[tuple(slice(0, w.stop - w.start) for w in where)]
    return out


def _read_by_hand(path: pathlib.Path) -> tuple[dict[str, np.ndarray], int]:
    """`(target leaves by slash name, step)` of a legacy checkpoint, without prompt_tuning."""
    contents = msgpack.unpackb((path / "checkpoint").read_bytes(), raw=False)
    assert contents["version"] == 3 and set(contents) == {"version", "optimizer"}
    leaves = {}

    def walk(tree, prefix):
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, msgpack.ExtType):
                leaves[name] = _ext_array(value)
            elif isinstance(value, dict) and value.get("driver") == "zarr":
                assert value["kvstore"] == {
                    "driver": "file",
                    "path": "target." + name.replace("/", "."),
                }
                leaves[name] = _zarr_array(path / value["kvstore"]["path"])
                assert list(leaves[name].shape) == value["metadata"]["shape"]
            else:
                walk(value, name + "/")

    walk(contents["optimizer"]["target"], "")
    return leaves, int(_ext_array(contents["optimizer"]["state"]["step"]))


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_legacy_t5x_writer_read_by_hand(tmp_path, dtype):
    config = configs.tiny(num_decoder_layers=3)
    params = _random_params(config, seed=6, dtype=dtype)
    params["encoder"]["prompt"] = {"prompt": np.arange(5 * 32, dtype=dtype).reshape(5, 32)}
    checkpoints.save_t5x_checkpoint(params, tmp_path / "checkpoint_11", step=11)
    leaves, step = _read_by_hand(tmp_path / "checkpoint_11")
    assert step == 11
    want = _flat(params)
    assert sorted(leaves) == sorted(want)
    for name, value in want.items():
        assert leaves[name].dtype == value.dtype, name
        np.testing.assert_array_equal(leaves[name], value, err_msg=name)
    zarr = {p.name for p in (tmp_path / "checkpoint_11").iterdir() if p.is_dir()}
    assert "target.token_embedder.embedding" in zarr and len(zarr) > 10  # kernels as zarr arrays


@pytest.mark.skipif(importlib.util.find_spec("t5x") is None, reason="T5X is not installed")
def test_legacy_t5x_writer_read_by_t5x(tmp_path):
    from t5x import checkpoints as t5x_checkpoints  # noqa: PLC0415

    config = configs.tiny(num_encoder_layers=1, num_decoder_layers=2)
    params = _random_params(config, seed=7)
    params["encoder"]["prompt"] = {"prompt": np.linspace(-1, 1, 3 * 32, dtype=np.float32)}
    params["encoder"]["prompt"]["prompt"] = params["encoder"]["prompt"]["prompt"].reshape(3, 32)
    checkpoints.save_t5x_checkpoint(params, tmp_path / "checkpoint_5", step=5)
    state = t5x_checkpoints.load_t5x_checkpoint(str(tmp_path / "checkpoint_5"))
    assert set(state) == {"target", "state"} and int(state["state"]["step"]) == 5
    got, want = _flat(state["target"]), _flat(params)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(np.asarray(got[name]), value, err_msg=name)


# ----------------------------------------------------------------------------------------------
# Legacy T5X and orbax round trips.


def test_legacy_t5x_write_read_round_trip(tmp_path):
    config = configs.tiny(num_decoder_layers=3)
    params = _random_params(config, seed=3)
    path = tmp_path / "checkpoint_7"
    checkpoints.save_t5x_checkpoint(params, path, step=7)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_7"]
    contents = msgpack.unpackb((path / "checkpoint").read_bytes(), raw=False)
    assert contents["version"] == 3
    assert _inline_array(contents["optimizer"]["state"]["step"].data) == 7
    zarray = json.loads(
        (path / "target.encoder.layers_0.attention.query.kernel" / ".zarray").read_text()
    )
    assert zarray["shape"] == [32, 32] and zarray["compressor"]["id"] == "gzip"
    assert checkpoints.detect_format(str(path)) == "t5x"
    loaded_config, loaded = checkpoints.load_checkpoint(path)
    assert loaded_config == config
    _assert_trees_equal(loaded, params)


def test_prompt_tuned_t5x_checkpoint_keeps_its_prompt(tmp_path):
    config = configs.tiny()
    params = _random_params(config, seed=4)
    prompt = np.random.default_rng(5).normal(size=(7, config.emb_dim)).astype(np.float32)
    params["encoder"]["prompt"] = {"prompt": prompt}
    checkpoints.save_t5x_checkpoint(params, tmp_path / "checkpoint_1", step=1)
    loaded_config, loaded = checkpoints.load_checkpoint(tmp_path / "checkpoint_1", config=config)
    assert loaded_config == config
    np.testing.assert_array_equal(loaded["encoder"]["prompt"]["prompt"], prompt)
    # Anything else unknown is still an error.
    params["encoder"]["adapter"] = {"kernel": prompt}
    checkpoints.save_t5x_checkpoint(params, tmp_path / "checkpoint_2", step=2)
    with pytest.raises(checkpoints.CheckpointError, match="unexpected.*adapter"):
        checkpoints.load_checkpoint(tmp_path / "checkpoint_2", config=config)


def test_legacy_t5x_bfloat16_round_trip_and_optimizer_state_never_read(tmp_path):
    config = configs.tiny(num_encoder_layers=1, num_decoder_layers=1)
    params = _random_params(config, seed=4, dtype=ml_dtypes.bfloat16)
    path = tmp_path / "checkpoint_1"
    checkpoints.save_t5x_checkpoint(params, path)
    # Point an optimizer-state leaf at an array that does not exist: loading must not open it.
    contents = msgpack.unpackb((path / "checkpoint").read_bytes(), raw=False)
    spec = contents["optimizer"]["target"]["token_embedder"]["embedding"]
    missing = dict(spec, kvstore={"driver": "file", "path": "state.param_states.missing"})
    contents["optimizer"]["state"]["param_states"] = {"token_embedder": {"embedding": missing}}
    (path / "checkpoint").write_bytes(msgpack.packb(contents, use_bin_type=True))
    _, loaded = checkpoints.load_checkpoint(path)
    _assert_trees_equal(loaded, params)


@pytest.mark.parametrize("subfolder", ["", "state"])
def test_orbax_ocdbt_write_read_round_trip(tmp_path, subfolder):
    import orbax.checkpoint as ocp

    config = configs.tiny(num_encoder_layers=1, num_decoder_layers=2)
    params = _random_params(config, seed=5)
    state = {"step": np.int32(9), "param_states": jax.tree.map(np.zeros_like, params)}
    item = tmp_path / "checkpoint_9" / subfolder
    ocp.PyTreeCheckpointer().save(item, {"target": params, "state": state})
    assert (item / "manifest.ocdbt").exists()
    path = tmp_path / "checkpoint_9"
    assert checkpoints.detect_format(str(path)) == "orbax"
    loaded_config, loaded = checkpoints.load_checkpoint(path)
    assert loaded_config == config
    _assert_trees_equal(loaded, params)
    _, cast = checkpoints.load_checkpoint(path, dtype=jnp.bfloat16)
    assert all(v.dtype == jnp.bfloat16 for v in _flat(cast).values())


# ----------------------------------------------------------------------------------------------
# Errors.


def test_missing_path_raises(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.load_checkpoint(tmp_path / "nope")


def test_unrecognised_folder_says_what_was_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        checkpoints.CheckpointError, match="config.json.*checkpoint.*manifest.ocdbt"
    ):
        checkpoints.load_checkpoint(tmp_path)


def _small_legacy(tmp_path):
    config = configs.tiny(num_encoder_layers=1, num_decoder_layers=1)
    path = tmp_path / "checkpoint_0"
    checkpoints.save_t5x_checkpoint(_random_params(config), path)
    return config, path


def test_truncated_zarr_chunk_names_array_and_file(tmp_path):
    _, path = _small_legacy(tmp_path)
    chunk = path / "target.encoder.layers_0.mlp.wo.kernel" / "0.0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load_checkpoint(path)
    assert "encoder/layers_0/mlp/wo/kernel" in str(error.value)
    assert str(chunk) in str(error.value)


def test_missing_zarr_chunk_is_not_read_as_zeros(tmp_path):
    _, path = _small_legacy(tmp_path)
    chunk = path / "target.decoder.logits_dense.kernel" / "0.0"
    chunk.unlink()
    with pytest.raises(checkpoints.CheckpointError, match="decoder/logits_dense/kernel.*0.0"):
        checkpoints.load_checkpoint(path)


def test_config_shape_mismatch_names_parameter_and_shapes(tmp_path):
    config, path = _small_legacy(tmp_path)
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load_checkpoint(path, config=config.replace(mlp_dim=48))
    message = str(error.value)
    assert "encoder/layers_0/mlp/wi_0/kernel" in message
    assert "(32, 64)" in message and "(32, 48)" in message
    with pytest.raises(checkpoints.CheckpointError, match="missing.*decoder/layers_1/"):
        checkpoints.load_checkpoint(path, config=config.replace(num_decoder_layers=2))
    with pytest.raises(checkpoints.CheckpointError, match="unexpected.*logits_dense"):
        checkpoints.load_checkpoint(path, config=config.replace(logits_via_embedding=True))


def test_legacy_checkpoint_file_path_is_accepted(tmp_path):
    config, path = _small_legacy(tmp_path)
    assert orbax_format.find_orbax_item(str(path)) is None
    loaded_config, _ = checkpoints.load_checkpoint(path / "checkpoint")
    assert loaded_config == config


def test_truncated_msgpack_file_raises(tmp_path):
    _, path = _small_legacy(tmp_path)
    data = (path / "checkpoint").read_bytes()
    (path / "checkpoint").write_bytes(data[: len(data) // 3])
    with pytest.raises(checkpoints.CheckpointError, match="not a readable msgpack checkpoint"):
        checkpoints.load_checkpoint(path)


def test_orbax_style_placeholder_strings_are_read(tmp_path):
    config, path = _small_legacy(tmp_path)
    _, want = checkpoints.load_checkpoint(path)
    contents = msgpack.unpackb((path / "checkpoint").read_bytes(), raw=False)
    layer = contents["optimizer"]["target"]["encoder"]["layers_0"]
    layer["mlp"]["wo"]["kernel"] = "PLACEHOLDER://target.encoder.layers_0.mlp.wo.kernel"
    (path / "checkpoint").write_bytes(msgpack.packb(contents, use_bin_type=True))
    _, got = checkpoints.load_checkpoint(path, config=config)
    _assert_trees_equal(got, want)


def test_hf_truncated_or_incomplete_safetensors_raise(tmp_path):
    config = configs.tiny(num_encoder_layers=1, num_decoder_layers=1)
    checkpoints.save_hf_checkpoint(_random_params(config), config, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(checkpoints.CheckpointError, match="truncated"):
        checkpoints.load_checkpoint(tmp_path / "hf")
    state = hf_format.params_to_hf_state_dict(_random_params(config), config)
    del state["decoder.block.0.layer.2.DenseReluDense.wo.weight"]
    hf_format.write_safetensors(str(weights), state)
    with pytest.raises(checkpoints.CheckpointError, match="missing.*layer.2.DenseReluDense.wo"):
        checkpoints.load_checkpoint(tmp_path / "hf")


def test_read_variable_opens_only_that_array(tmp_path):
    config = configs.tiny(num_encoder_layers=1, num_decoder_layers=1)
    params = _random_params(config, seed=8)
    path = tmp_path / "checkpoint_0"
    checkpoints.save_t5x_checkpoint(params, path)
    # Another array is corrupt: reading the whole checkpoint fails, reading the embedding does not.
    (path / "target.encoder.layers_0.mlp.wo.kernel" / "0.0").write_bytes(b"broken")
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.load_checkpoint(path)
    embedding = checkpoints.read_variable(path, "token_embedder/embedding")
    np.testing.assert_array_equal(embedding, params["token_embedder"]["embedding"])
    with pytest.raises(checkpoints.CheckpointError, match="no parameter 'encoder/prompt/prompt'"):
        checkpoints.read_variable(path, "encoder/prompt/prompt")


def test_read_variable_from_hf_folder(tmp_path):
    model = _hf_model(tied=False, gated=True)
    model.save_pretrained(tmp_path)
    embedding = checkpoints.read_variable(tmp_path, "token_embedder/embedding")
    np.testing.assert_array_equal(embedding, _hf_state(model)["shared.weight"])


def test_writers_unbox_flax_boxes_and_reject_non_arrays(tmp_path):
    boxed = network.EncoderDecoder(configs.tiny()).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 2), jnp.int32),
        jnp.ones((1, 2), jnp.int32), enable_dropout=False,
    )["params"]  # fmt: skip
    assert any(isinstance(x, nn.Partitioned) for x in jax.tree.leaves(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)))  # fmt: skip
    checkpoints.save_t5x_checkpoint(boxed, tmp_path / "checkpoint_0")
    _, loaded = checkpoints.load_checkpoint(tmp_path / "checkpoint_0")
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(nn.unbox(boxed)), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(checkpoints.CheckpointError, match="encoder/x is a object, not an array"):
        checkpoints.save_t5x_checkpoint({"encoder": {"x": object()}}, tmp_path / "bad")
