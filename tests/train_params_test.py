"""A run's starting parameters: prompt initializers take the embedding as an argument, read once."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.parallel import partitioning
from prompt_tuning.prompts import initializers
from prompt_tuning.t5 import checkpoints as t5_checkpoints
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network
from prompt_tuning.train import optimizers, params
from prompt_tuning.train.model import PromptModel

LENGTHS = {"inputs": 8, "targets": 4}


def _model(vocab, embedding, num_samples=100):
    config = t5_config.tiny(vocab_size=vocab)
    init = initializers.sampled_vocab(embedding, num_samples=num_samples)
    return PromptModel(network.EncoderDecoder(config, prompt=prompts.Prompt(6, prompt_init=init)))


def _checkpoint(tmp_path, vocab):
    plain = PromptModel(network.EncoderDecoder(t5_config.tiny(vocab_size=vocab)))
    frozen = nn.unbox(plain.init_boxed(jax.random.key(vocab), 8, 4))
    path = tmp_path / f"checkpoint_v{vocab}"
    t5_checkpoints.save_t5x_checkpoint(frozen, path)
    return str(path), np.asarray(frozen["token_embedder"]["embedding"])


@pytest.fixture
def reads(monkeypatch):
    """Records every host read of an initializer's embedding."""
    calls = []
    real = initializers.read_checkpoint_variable
    monkeypatch.setattr(
        initializers,
        "read_checkpoint_variable",
        lambda path, variable: calls.append(path) or real(path, variable),
    )
    return calls


def _init_program(model, mesh, trainable_sharding, table):
    init = lambda r: model.init_boxed(r, 8, 4)  # noqa: E731
    split = lambda tree: optimizers.split_params(tree, "prompt")  # noqa: E731
    keys = [source.key for source in initializers.embedding_sources(model.prompt)]
    fn = params.trainable_initializer(init, trainable_sharding, split, keys)
    return fn.lower(jax.random.key(0), [table]).as_text()


def test_sampled_vocab_uses_the_loaded_embedding_without_reading_or_baking_it(tmp_path, reads):
    mesh = partitioning.make_mesh(4)
    texts = {}
    for vocab in (512, 8192):
        path, embedding = _checkpoint(tmp_path, vocab)
        model = _model(vocab, path)
        trainable, frozen = params.initial_params(
            model, mesh, jax.random.key(1), LENGTHS, path, "prompt", log=None
        )
        assert reads == []  # INITIAL_CHECKPOINT_PATH's embedding is the frozen array itself
        prompt = np.asarray(trainable["encoder"]["prompt"]["prompt"])  # [6, 32]
        candidates = {tuple(row) for row in embedding[:100]}
        assert all(tuple(row) in candidates for row in prompt)
        assert len({tuple(row) for row in prompt}) == 6  # drawn without replacement
        table = frozen["token_embedder"]["embedding"]
        sharding = partitioning.shardings_of(trainable)
        texts[vocab] = _init_program(model, mesh, sharding, table)
    # A [V, H] constant would add ~V*H*4 bytes of hex to the program (8192*32*4 = 1 MiB).
    assert len(texts[8192]) - len(texts[512]) < 2000


def test_another_embedding_is_read_once_on_the_host(tmp_path, reads):
    path, _ = _checkpoint(tmp_path, 512)
    other = np.random.default_rng(0).normal(size=(512, 32)).astype(np.float32)
    np.save(tmp_path / "other.npy", other)
    model = _model(512, str(tmp_path / "other.npy"), num_samples=512)
    trainable, _ = params.initial_params(
        model, partitioning.make_mesh(2), jax.random.key(1), LENGTHS, path, "prompt", log=None
    )
    assert reads == [str(tmp_path / "other.npy")]  # once, though init is traced twice
    rows = {tuple(row) for row in other}
    assert all(tuple(r) in rows for r in np.asarray(trainable["encoder"]["prompt"]["prompt"]))


def test_a_random_frozen_model_lends_its_own_embedding(reads):
    model = _model(512, None)  # embedding=None: the model's own, here from RANDOM_SEED
    trainable, frozen = params.initial_params(
        model, partitioning.make_mesh(1), jax.random.key(2), LENGTHS, None, "prompt", log=None
    )
    embedding = np.asarray(frozen["token_embedder"]["embedding"])
    rows = {tuple(row) for row in embedding[:100]}
    assert all(tuple(r) in rows for r in np.asarray(trainable["encoder"]["prompt"]["prompt"]))
    assert reads == []
    with pytest.raises(ValueError, match="model's own embedding, which only the trainer"):
        model.init_boxed(jax.random.key(0), 8, 4)


@pytest.mark.parametrize("from_checkpoint", [True, False])
def test_bfloat16_frozen_weights_init_the_prompt_from_the_stored_embedding(
    tmp_path, from_checkpoint
):
    """FROZEN_DTYPE="bfloat16": the prompt samples the checkpoint's float32 rows (as Lester et al.'s
    code reads them), and only then is the frozen embedding stored in bfloat16."""
    path, embedding = _checkpoint(tmp_path, 512)
    model = _model(512, path if from_checkpoint else None)
    trainable, frozen = params.initial_params(
        model,
        partitioning.make_mesh(1),
        jax.random.key(3),
        LENGTHS,
        path if from_checkpoint else None,
        "prompt",
        frozen_dtype="bfloat16",
        log=None,
    )
    table = frozen["token_embedder"]["embedding"]
    assert table.dtype == jnp.bfloat16
    # Norm scales keep their float32 (FROZEN_DTYPE casts matmul weights only).
    assert frozen["encoder"]["encoder_norm"]["scale"].dtype == jnp.float32
    prompt = np.asarray(trainable["encoder"]["prompt"]["prompt"])  # [6, 32] float32
    rounded = np.asarray(jnp.asarray(prompt).astype(jnp.bfloat16), np.float32)
    # Rounding the prompt gives rows of the bfloat16 table, but the prompt itself was not rounded
    # (a prompt sampled from the bfloat16 table would equal its rounding).
    table_rows = {tuple(row) for row in np.asarray(table[:100], np.float32)}
    assert all(tuple(r) in table_rows for r in rounded)
    assert not np.array_equal(rounded, prompt)
    if from_checkpoint:  # exactly the checkpoint's float32 rows
        assert all(tuple(r) in {tuple(row) for row in embedding[:100]} for r in prompt)
