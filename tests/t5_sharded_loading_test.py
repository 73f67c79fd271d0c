"""Sharded loading: every format straight into global arrays, each distinct slice read once.

References: the host load of `checkpoints.load_checkpoint` (tested against transformers and the
real T5X fixture in t5_checkpoints_test.py) and the byte count of the slices a mesh holds.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prompt_tuning.parallel import partitioning
from prompt_tuning.t5 import checkpoint_tree, checkpoints, hf_format, network, sharded_loading
from prompt_tuning.t5 import config as configs

CONFIG = configs.tiny(num_encoder_layers=1, num_decoder_layers=2, num_heads=4, head_dim=8)


def _random_params(seed=0):
    rng = np.random.default_rng(seed)
    shapes = checkpoints.expected_shapes(CONFIG)
    return {name: rng.normal(size=s).astype(np.float32) for name, s in shapes.items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    flat = _random_params()
    root = tmp_path_factory.mktemp("sharded")
    params = checkpoint_tree.unflatten(flat)
    checkpoints.save_t5x_checkpoint(params, root / "t5x")
    checkpoints.save_hf_checkpoint(params, CONFIG, root / "hf")
    ocp.PyTreeCheckpointer().save(root / "orbax", {"target": params, "state": {"step": 3}})
    return root, flat


def _shardings(mesh):
    boxed = jax.eval_shape(
        lambda: network.EncoderDecoder(CONFIG).init(
            jax.random.key(0),
            jnp.ones((1, 4), jnp.int32),
            jnp.ones((1, 2), jnp.int32),
            jnp.ones((1, 2), jnp.int32),
            enable_dropout=False,
        )["params"]
    )
    return checkpoint_tree.flatten(partitioning.params_shardings(boxed, mesh))


@pytest.mark.parametrize("kind", ["t5x", "hf", "orbax"])
def test_each_format_loads_into_global_arrays_of_the_given_shardings(saved, kind):
    root, flat = saved
    shardings = _shardings(partitioning.make_mesh(4))  # 2 x 4: kernels split over "model"
    config, loaded, stats = sharded_loading.load_checkpoint_sharded(
        root / kind, shardings, dtype=jnp.bfloat16
    )
    assert config == CONFIG
    loaded = checkpoint_tree.flatten(loaded)
    assert sorted(loaded) == sorted(flat)
    for name, array in loaded.items():
        assert array.sharding == shardings[name], name
        assert array.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(array), flat[name].astype(ml_dtypes.bfloat16))
    assert "Loaded the frozen model" in stats.summary()
    if kind != "orbax":
        # One process holds every device here: it reads each distinct slice once, i.e. every
        # stored byte exactly once (replicated slices are not read again per device).
        assert stats.bytes_read == sum(a.nbytes for a in flat.values())
        split = [n for n, s in shardings.items() if partitioning.MODEL_AXIS in s.spec]
        assert stats.slices_read == len(flat) + 3 * len(split)  # 4 slices per split array


def test_a_wrong_config_fails_before_any_array_is_read(saved, monkeypatch):
    root, _ = saved
    read = []
    monkeypatch.setattr(hf_format.SafetensorsReader, "read", lambda self, i=None: read.append(1))
    # A Hugging Face folder's config.json names the field (a T5X checkpoint: the parameter).
    with pytest.raises(checkpoint_tree.CheckpointError, match=r"mlp_dim is 48 but.*mlp_dim=64"):
        sharded_loading.load_checkpoint_sharded(
            root / "hf", _shardings(partitioning.make_mesh(1)), config=CONFIG.replace(mlp_dim=48)
        )
    assert not read


def test_read_variable_reads_only_that_array_in_every_format(saved, monkeypatch):
    root, flat = saved
    names = []
    real_read = hf_format.SafetensorsReader.read
    monkeypatch.setattr(
        hf_format.SafetensorsReader,
        "read",
        lambda self, index=None: names.append(self.name) or real_read(self, index),
    )
    embedding = checkpoints.read_variable(root / "hf", "token_embedder/embedding")
    np.testing.assert_array_equal(embedding, flat["token_embedder/embedding"])
    assert names == ["shared.weight"]
    restored = []
    real_restore = ocp.PyTreeCheckpointer.restore
    monkeypatch.setattr(
        ocp.PyTreeCheckpointer,
        "restore",
        lambda self, path, args=None: restored.append(args.item) or real_restore(self, path, args),
    )
    embedding = checkpoints.read_variable(root / "orbax", "token_embedder/embedding")
    np.testing.assert_array_equal(embedding, flat["token_embedder/embedding"])
    (item,) = restored
    assert checkpoint_tree.flatten(item).keys() == {"target/token_embedder/embedding"}


def test_corrupt_files_are_named_with_the_problem(tmp_path, saved):
    root, flat = saved
    params = checkpoint_tree.unflatten(flat)
    checkpoints.save_hf_checkpoint(params, CONFIG, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(checkpoint_tree.CheckpointError) as error:
        checkpoints.load_checkpoint(tmp_path / "hf")
    assert str(weights) in str(error.value) and "truncated or corrupt" in str(error.value)
    (tmp_path / "hf" / "config.json").write_text("{not json")
    with pytest.raises(checkpoint_tree.CheckpointError, match="config.json is not valid JSON"):
        checkpoints.load_checkpoint(tmp_path / "hf")
    checkpoints.save_t5x_checkpoint(params, tmp_path / "t5x")
    chunk = tmp_path / "t5x" / "target.token_embedder.embedding" / "0.0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(checkpoint_tree.CheckpointError) as error:
        sharded_loading.load_checkpoint_sharded(
            tmp_path / "t5x", _shardings(partitioning.make_mesh(2))
        )
    assert "token_embedder/embedding" in str(error.value) and str(chunk.parent) in str(error.value)
