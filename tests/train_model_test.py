"""PromptModel's score/predict agree with its teacher-forced logits; partitioning rules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prompt_tuning import prompts
from prompt_tuning.parallel import partitioning
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import decoding, network
from prompt_tuning.train.model import PromptModel


@pytest.fixture(scope="module")
def model_and_params():
    module = network.EncoderDecoder(t5_config.tiny(), prompt=prompts.Prompt(length=3))
    model = PromptModel(module)
    boxed = model.init_boxed(jax.random.key(0), 6, 4)
    return model, boxed


def _batch():
    targets = np.array([[5, 9, 1, 0], [7, 1, 0, 0]], np.int32)
    return {
        "encoder_input_tokens": np.array([[3, 4, 5, 1, 0, 0], [8, 1, 0, 0, 0, 0]], np.int32),
        "decoder_input_tokens": np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], 1),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }


def test_score_is_sum_of_target_log_probs(model_and_params):
    model, boxed = model_and_params
    params, batch = nn.unbox(boxed), _batch()
    logits = np.asarray(model.logits(params, batch), np.float64)  # [B, S, V]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_p, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    expected = (picked * batch["decoder_loss_weights"]).sum(-1)
    np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)), expected, rtol=1e-4)
    loss, aux = model.loss_fn(params, batch, None)
    assert float(aux["num_tokens"]) == 5
    z = np.log(np.exp(logits).sum(-1))
    # T5X's default LOSS_NORMALIZING_FACTOR (None) sums the weighted token losses.
    manual = (-(picked) + 1e-4 * z**2)[batch["decoder_loss_weights"] > 0].sum()
    np.testing.assert_allclose(float(loss), manual, rtol=1e-4)


def test_greedy_prediction_starts_with_teacher_forced_argmax(model_and_params):
    model, boxed = model_and_params
    params, batch = nn.unbox(boxed), _batch()
    tokens = np.asarray(model.predict_batch(params, batch, method="greedy"))
    assert tokens.shape == (2, 4)
    first = np.asarray(model.logits(params, batch))[:, 0].argmax(-1)  # step 0 sees only BOS
    np.testing.assert_array_equal(tokens[:, 0], first)
    with pytest.raises(ValueError, match="Unknown decode method 'top_k'"):
        model.predict_batch(params, batch, method="top_k")


def _exhaustive_beam(logits_fn, params, encoder_tokens, width, eos_id):
    """Every two-token hypothesis a beam of `width` can reach, found by enumeration.

    Teacher-forced log-probabilities of every continuation (full forward passes, not the cached
    decoder). Step 1 keeps the `width` most likely non-EOS tokens alive; `[EOS]` is finished at
    length 1 when it is among the 2 * width most likely; at step 2 (the maximum length) every
    expansion of a live token is finished at length 2.

    Returns:
      Per example, a list of (tokens, log-likelihood, length).
    """
    log_softmax = lambda x: x - x.max() - np.log(np.exp(x - x.max()).sum())  # noqa: E731
    results = []
    for row in encoder_tokens:
        first = {
            "encoder_input_tokens": row[None],
            "decoder_input_tokens": np.zeros((1, 1), np.int32),
            "decoder_target_tokens": np.ones((1, 1), np.int32),
        }
        lp1 = log_softmax(np.asarray(logits_fn(params, first), np.float64)[0, 0])  # [V]
        order = np.argsort(-lp1)
        candidates = []
        if eos_id in order[: 2 * width]:
            candidates.append(((eos_id, 0), lp1[eos_id], 1))
        for a in [int(t) for t in order if t != eos_id][:width]:
            assert a != 0  # 0 is the start/padding token: scoring below would mask it
            second = {
                "encoder_input_tokens": row[None],
                "decoder_input_tokens": np.array([[0, a]], np.int32),
                "decoder_target_tokens": np.array([[a, 1]], np.int32),
            }
            lp2 = log_softmax(np.asarray(logits_fn(params, second), np.float64)[0, 1])
            candidates += [((a, t), lp1[a] + lp2[t], 2) for t in range(lp2.size)]
        results.append(candidates)
    return results


def test_beam_search_finds_the_best_hypotheses_of_an_exhaustive_search(model_and_params):
    model, boxed = model_and_params
    params, batch = nn.unbox(boxed), _batch()
    enc, width = batch["encoder_input_tokens"], 2
    logits_fn = jax.jit(model.logits)
    start = dict(batch, decoder_input_tokens=np.zeros((2, 4), np.int32))
    eos_id = int(np.argsort(-np.asarray(logits_fn(params, start))[0, 0])[1])  # 2nd likeliest
    reachable = _exhaustive_beam(logits_fn, params, enc, width, eos_id)
    assert any(seq[0] == eos_id for cands in reachable for seq, _, _ in cands)  # [EOS] competes
    search = jax.jit(decoding.beam_search, static_argnums=(0, 3, 4), static_argnames="eos_id")
    for alpha in (0.0, 0.6):
        tokens, scores = search(model.module, params, enc, 2, width, alpha, eos_id=eos_id)
        for b, cands in enumerate(reachable):
            ranked = sorted(((ll / ((5 + n) / 6) ** alpha, t) for t, ll, n in cands), reverse=True)
            got = [tuple(int(x) for x in t) for t in np.asarray(tokens[b])]
            assert got == [t for _, t in ranked[:width]], alpha
            np.testing.assert_allclose(scores[b], [v for v, _ in ranked[:width]], rtol=1e-4)


def test_param_shardings_follow_logical_axes(model_and_params):
    _, boxed = model_and_params
    mesh = partitioning.make_mesh(num_partitions=4)
    assert dict(mesh.shape) == {"data": 2, "model": 4}
    shardings = partitioning.params_shardings(boxed, mesh)
    assert shardings["encoder"]["prompt"]["prompt"].spec == P(None, None)  # replicated
    assert shardings["token_embedder"]["embedding"].spec == P("model", None)  # vocab
    query = shardings["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert query.spec == P(None, "model")  # ("embed", "joined_kv")
    assert partitioning.data_sharding(mesh).spec == P("data")


def test_logical_rules_edge_cases():
    mesh = partitioning.make_mesh(num_partitions=4)
    spec = partitioning.logical_to_mesh_spec(("heads", "relpos_buckets"), (6, 32), mesh)
    assert spec == P(None, None)  # 6 heads do not split over 4 devices: replicated
    spec = partitioning.logical_to_mesh_spec(("prompt_rank", "prompt_tasks"), (8, 8), mesh)
    assert spec == P(None, None)
    with pytest.raises(ValueError, match="Logical axis 'experts' has no partitioning rule"):
        partitioning.logical_to_mesh_spec(("experts",), (8,), mesh)
    with pytest.raises(
        ValueError, match=r"NUM_PARTITIONS=3 does not divide the 8 devices.*\[1, 2, 4, 8\]"
    ):
        partitioning.make_mesh(num_partitions=3)


def test_shard_batch_splits_the_batch_over_data(model_and_params):
    mesh = partitioning.make_mesh(num_partitions=2)
    batch = partitioning.shard_batch({"x": np.arange(8 * 3).reshape(8, 3)}, mesh)
    assert batch["x"].sharding.spec == P("data")
    assert len(batch["x"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(24).reshape(8, 3))
    assert jnp.sum(batch["x"]) == 276
