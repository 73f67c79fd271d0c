"""Tests of `PromptBank` and ``predict.ensemble`: N prompts in one pass equal N runs."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning.predict import ensemble, evaluation
from prompt_tuning.predict.predictor import Predictor
from prompt_tuning.prompts.bank import PromptBank
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5.network import EncoderDecoder
from prompt_tuning.train.model import PromptModel

P, T, S, B = 3, 10, 5, 4
CONFIG = t5_config.tiny(vocab_size=512)


@pytest.fixture(scope="module")
def setup():
    """Jitted plain-prompt functions, params, a 3-prompt bank model and three distinct prompts."""
    single = PromptModel(EncoderDecoder(CONFIG, prompt=Prompt(length=P)))
    params = jax.jit(lambda r: nn.unbox(single.init_boxed(r, T, S)))(jax.random.key(0))
    bank = PromptModel(EncoderDecoder(CONFIG, prompt=ensemble.bank_prompt(3, P)))
    rng = np.random.default_rng(0)
    prompts = [rng.normal(0.0, 2.0, (P, CONFIG.emb_dim)).astype(np.float32) for _ in range(3)]
    rng_tokens = np.random.default_rng(1)
    enc = rng_tokens.integers(3, 259, (B, T)).astype(np.int32)
    enc[:, -2:] = 0
    batch = {"encoder_input_tokens": enc, "decoder_target_tokens": np.ones((B, S), np.int32)}
    jitted = {
        "model": single,
        "predict": jax.jit(single.predict_batch),
        "score": jax.jit(single.score_batch),
    }
    return jitted, params, bank, prompts, batch


def _scored(batch, targets):
    """`batch` with `targets [B, S]` as the decoder targets (for `score_batch`)."""
    return dict(
        batch,
        decoder_target_tokens=targets,
        decoder_input_tokens=evaluation.shift_right(targets),
        decoder_loss_weights=(targets > 0).astype(np.int32),
    )


def _with_prompt(params, prompt):
    out = dict(params)
    out["encoder"] = {**params["encoder"], "prompt": {"prompt": prompt}}
    return out


def test_prompt_bank_selects_each_examples_prompt():
    bank = PromptBank(num_prompts=3, length=2)
    embedded = np.zeros((4, 5, 6), np.float32)
    variables = bank.init(jax.random.key(0), np.ones((4, 5), np.int32), embedded, np.zeros(4, int))
    table = np.asarray(nn.unbox(variables)["params"]["prompt"])
    assert table.shape == (3, 2, 6)
    assert np.all(np.abs(table) <= 0.5)
    ids = np.array([2, 0, 1, 2])
    out = bank.apply(variables, np.ones((4, 5), np.int32), embedded, ids)
    np.testing.assert_array_equal(np.asarray(out), table[ids])
    with pytest.raises(ValueError, match="task_ids"):
        bank.apply(variables, np.ones((4, 5), np.int32), embedded, None)
    with pytest.raises(ValueError, match="Task id 3"):  # never clipped to another prompt
        bank.apply(variables, np.ones((4, 5), np.int32), embedded, np.array([0, 3, 1, 2]))


def test_replicate_batch_sets_copy_ids():
    batch = {"encoder_input_tokens": np.array([[4, 1], [5, 1]]), "task_ids": np.array([7, 7])}
    out = ensemble.replicate_batch(batch, 3)
    np.testing.assert_array_equal(out["encoder_input_tokens"][:, 0], [4, 5, 4, 5, 4, 5])
    np.testing.assert_array_equal(out["task_ids"], [0, 0, 1, 1, 2, 2])


def test_majority_vote_ties_go_to_earliest_prompt():
    assert ensemble.majority_vote(["b", "a", "a"]) == 1
    assert ensemble.majority_vote(["b", "a", "c"]) == 0
    assert ensemble.majority_vote(["c", "a", "a", "c"]) == 0


def test_ensemble_predictions_and_scores_equal_per_prompt_runs(setup):
    single, params, bank, prompts, batch = setup
    members = ensemble.PromptEnsemble(bank, 3)
    bank_params = ensemble.bank_params(params, prompts)
    per_prompt = [np.asarray(single["predict"](_with_prompt(params, p), batch)) for p in prompts]
    np.testing.assert_array_equal(members.member_predictions(bank_params, batch), per_prompt)
    scored = _scored(batch, per_prompt[0])
    expected = np.mean(
        [np.asarray(single["score"](_with_prompt(params, p), scored)) for p in prompts], axis=0
    )
    np.testing.assert_allclose(members.score(bank_params, scored), expected, atol=1e-5)


def test_ensemble_votes_with_the_majority(setup):
    single, params, bank, prompts, batch = setup
    # Prompt b once, prompt a twice: the vote is a's prediction for every example.
    a, b = prompts[0], prompts[1]
    voted = ensemble.PromptEnsemble(bank, 3).predict(ensemble.bank_params(params, [b, a, a]), batch)
    np.testing.assert_array_equal(voted, single["predict"](_with_prompt(params, a), batch))


def test_ensemble_rank_classification_votes_over_per_prompt_choices(setup):
    single, params, bank, prompts, batch = setup
    labels = np.array([[10, 11, 1, 0, 0], [12, 1, 0, 0, 0], [13, 14, 15, 1, 0]], np.int32)
    per_prompt = []  # Each prompt alone: argmax over labels of its scores [B, C].
    for p in prompts:
        scores = [
            single["score"](_with_prompt(params, p), _scored(batch, np.tile(lab, (B, 1))))
            for lab in labels
        ]
        per_prompt.append(np.argmax(np.stack(scores, axis=1), axis=1))
    members = ensemble.PromptEnsemble(bank, 3)
    bank_params = ensemble.bank_params(params, prompts)
    choices = members.member_choices(bank_params, batch, labels)
    np.testing.assert_array_equal(choices, per_prompt)
    # The vote over choices [N=3, B=4], counted by hand: the most frequent label of each column,
    # a three-way tie going to the first prompt's choice.
    designed = np.array([[0, 2, 2, 1], [1, 1, 0, 1], [1, 0, 2, 1]])

    class Designed(ensemble.PromptEnsemble):
        def member_choices(self, params, batch, label_tokens):
            return designed

    voted = Designed(bank, 3).classify(bank_params, batch, labels)
    np.testing.assert_array_equal(voted, [1, 2, 2, 1])


def test_mixed_task_batch_uses_each_examples_prompt(setup):
    single, params, bank, prompts, batch = setup
    task_ids = np.array([2, 0, 1, 2], np.int32)
    bank_params = ensemble.bank_params(params, prompts)
    predictor = Predictor(bank)
    tokens = predictor.predict(bank_params, dict(batch, task_ids=task_ids))
    scores = predictor.score(bank_params, _scored(dict(batch, task_ids=task_ids), tokens))
    for task, prompt in enumerate(prompts):  # Each prompt alone on the whole batch.
        rows = task_ids == task
        own = _with_prompt(params, prompt)
        alone = np.asarray(single["predict"](own, batch))
        np.testing.assert_array_equal(tokens[rows], alone[rows])
        alone_scores = np.asarray(single["score"](own, _scored(batch, tokens)))
        np.testing.assert_allclose(scores[rows], alone_scores[rows], atol=1e-5)


def test_out_of_range_task_ids_stop_before_the_step(setup):
    _, params, bank, prompts, batch = setup
    predictor = Predictor(bank)
    bad = dict(batch, task_ids=np.array([0, 3, 1, 2], np.int32))  # a bank of 3 prompts
    with pytest.raises(ValueError, match=r"Task id 3 of the batch .* 3 task ids \(0\.\.2\)"):
        predictor.predict(ensemble.bank_params(params, prompts), bad)
    with pytest.raises(ValueError, match=r"Task id 3 of task 'my_task'"):
        bank.check_task_ids(bad, "task 'my_task'")


def test_stack_prompts_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        ensemble.stack_prompts([np.zeros((3, 4)), np.zeros((2, 4))])


def test_mixture_with_task_ids_evaluates_each_task_with_its_prompt(setup):
    """`builtin_equal_with_task_ids` through one bank model == each base task with its prompt."""
    import tasks  # noqa: PLC0415 (registers the built-in tasks and mixtures)
    from tasks import builtin  # noqa: PLC0415

    single, params, bank, prompts, _ = setup
    lengths = {"inputs": 16, "targets": 10}
    mixture = evaluation.Evaluator(
        "builtin_equal_with_task_ids", lengths, bank, batch_size=4, num_examples=4
    )
    bank_params = ensemble.bank_params(params, prompts)
    metrics = mixture.evaluate(bank_params, step=0)
    base_tasks = ("builtin_sentiment", "builtin_topic", "builtin_keyword")  # task_ids order
    for task_id, base in enumerate(base_tasks):
        variant = f"{base}_with_task_id_{task_id}"
        alone = evaluation.Evaluator(base, lengths, single["model"], batch_size=4, num_examples=4)
        own = _with_prompt(params, prompts[task_id])
        choices = alone.rank_choices(own, base)
        np.testing.assert_array_equal(mixture.rank_choices(bank_params, variant), choices)
        labels = tasks.label_strings(base)
        targets = builtin.generate_examples(base.split("_")[1], "validation")[1][:4]
        hits = [labels[c] == t for c, t in zip(choices, targets)]
        assert metrics[f"{variant}/rank_accuracy"] == pytest.approx(100.0 * np.mean(hits))
        assert f"{variant}/accuracy" in metrics
