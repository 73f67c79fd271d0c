"""Prompt initializers (Lester et al., 2021, section 3.2) and their file formats."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from prompt_tuning.prompts import initializers

FIXTURE = (
    pathlib.Path(__file__).resolve().parents[2] / "shared/fixtures/t5x_t5_1_1_tiny/checkpoint_3"
)
V, H = 40, 6


@pytest.fixture(name="embedding")
def _embedding():
    # Distinct rows so each drawn row can be traced back to its index.
    return np.arange(V * H, dtype=np.float32).reshape(V, H) / 7.0


def _row_indices(prompt, embedding):
    """Index of the embedding row equal to each prompt row (-1 if none)."""
    prompt = np.asarray(prompt)
    matches = [np.flatnonzero(np.all(np.isclose(embedding, row), axis=1)) for row in prompt]
    return [int(m[0]) if len(m) else -1 for m in matches]


def test_random_uniform_range():
    prompt = initializers.random_uniform(0.5)(jax.random.key(0), (100, 64))
    assert prompt.shape == (100, 64) and prompt.dtype == jnp.float32
    assert float(prompt.min()) >= -0.5 and float(prompt.max()) <= 0.5
    assert float(prompt.min()) < -0.45 and float(prompt.max()) > 0.45  # fills the interval
    assert abs(float(prompt.mean())) < 0.02  # uniform on [-0.5, 0.5] has mean 0
    np.testing.assert_allclose(float(prompt.var()), 1 / 12, rtol=0.05)  # and variance 1/12


def test_sampled_vocab_draws_distinct_rows_among_first_n(embedding):
    prompt = initializers.sampled_vocab(embedding, num_samples=12)(jax.random.key(1), (10, H))
    rows = _row_indices(prompt, embedding)
    assert all(0 <= r < 12 for r in rows)
    assert len(set(rows)) == 10  # without replacement


def test_sampled_vocab_with_more_rows_than_candidates_warns(embedding):
    init = initializers.sampled_vocab(embedding, num_samples=4)
    with pytest.warns(UserWarning, match="with replacement"):
        prompt = init(jax.random.key(2), (9, H))
    rows = _row_indices(prompt, embedding)
    assert all(0 <= r < 4 for r in rows) and len(rows) == 9


def test_sampled_vocab_rejects_width_mismatch(embedding):
    with pytest.raises(ValueError, match=r"\(40, 6\).*\(3, 5\)"):
        initializers.sampled_vocab(embedding)(jax.random.key(0), (3, 5))


def test_class_labels_average_label_pieces_then_sample(embedding):
    vocab = seqio.ByteVocabulary()  # "ab" -> bytes 97, 98 shifted by 3 special ids
    assert list(vocab.encode("ab")) == [100, 101]
    table = np.concatenate([embedding, embedding * -1.0 - 1.0, embedding + 1000.0])  # [120, H]
    init = initializers.class_labels(["ab", "c"], vocab, table, num_samples=20)
    prompt = np.asarray(init(jax.random.key(3), (5, H)))
    np.testing.assert_allclose(prompt[0], (table[100] + table[101]) / 2, rtol=1e-6)
    np.testing.assert_allclose(prompt[1], table[102], rtol=1e-6)
    rest = _row_indices(prompt[2:], table)
    assert all(0 <= r < 20 for r in rest) and len(set(rest)) == 3


def test_class_labels_errors_name_the_fix(embedding):
    vocab = seqio.ByteVocabulary()
    with pytest.raises(ValueError, match="LABELS"):
        initializers.class_labels(None, vocab, embedding)(jax.random.key(0), (4, H))
    with pytest.raises(ValueError, match="PROMPT_LENGTH"):
        initializers.class_labels(["a", "b", "c"], vocab, embedding)(jax.random.key(0), (2, H))
    with pytest.raises(ValueError, match="rows"):  # byte ids beyond a 40-row table
        initializers.class_labels(["z"], vocab, embedding)(jax.random.key(0), (2, H))


def test_from_npy_round_trip_and_shape_check(tmp_path):
    saved = np.random.default_rng(0).normal(size=(4, H)).astype(np.float32)
    path = str(tmp_path / "prompt.npy")
    np.save(path, saved)
    np.testing.assert_array_equal(initializers.from_npy(path)(jax.random.key(0), (4, H)), saved)
    with pytest.raises(ValueError, match=r"\(4, 6\).*\(5, 6\)"):
        initializers.from_npy(path)(jax.random.key(0), (5, H))


def test_embedding_may_be_an_npy_path(tmp_path, embedding):
    path = str(tmp_path / "embedding.npy")
    np.save(path, embedding)
    from_array = initializers.sampled_vocab(embedding)(jax.random.key(4), (5, H))
    from_path = initializers.sampled_vocab(path)(jax.random.key(4), (5, H))
    np.testing.assert_array_equal(from_array, from_path)


def test_from_checkpoint_reads_a_t5x_checkpoint(tmp_path):
    from prompt_tuning.t5 import checkpoints

    prompt = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    embedding = np.random.default_rng(6).normal(size=(V, 4)).astype(np.float32)
    params = {"token_embedder": {"embedding": embedding}, "encoder": {"prompt": {"prompt": prompt}}}
    path = str(tmp_path / "checkpoint_7")
    checkpoints.save_t5x_checkpoint(params, path, step=7)
    np.testing.assert_array_equal(initializers.from_checkpoint(path)(None, (3, 4)), prompt)
    sampled = initializers.sampled_vocab(path, num_samples=V)(jax.random.key(0), (3, 4))
    assert all(r >= 0 for r in _row_indices(sampled, embedding))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        initializers.from_checkpoint(path)(None, (2, 4))
    with pytest.raises(KeyError, match="encoder/prompt/missing"):
        initializers.from_checkpoint(path, "encoder/prompt/missing")(None, (3, 4))


@pytest.mark.skipif(not FIXTURE.exists(), reason="shared T5X fixture absent")
def test_sampled_vocab_reads_embedding_of_real_t5x_checkpoint():
    # The fixture was written by T5X itself: embedding [32128, 4] stored as a zarr array.
    from prompt_tuning.t5 import checkpoints

    _, params = checkpoints.load_checkpoint(str(FIXTURE))
    embedding = np.asarray(params["token_embedder"]["embedding"])
    prompt = initializers.sampled_vocab(str(FIXTURE))(jax.random.key(0), (8, 4))
    rows = _row_indices(prompt, embedding)
    assert all(0 <= r < 5000 for r in rows) and len(set(rows)) == 8
