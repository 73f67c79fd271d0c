"""`predict.predictor.Predictor`, its ensemble and its bank against transformers' T5.

The reference is transformers' `T5ForConditionalGeneration` with the same random weights
(`tests.t5_network_test.hf_model_and_params`) and the prompt prepended to the embedded input
(`inputs_embeds`, attention on every prompt position), as PEFT's prompt tuning runs it: greedy
`generate`, and teacher-forced log-likelihoods for scores, rank classification and beam scores.
Each prompt of an ensemble or a bank is compared with that prompt run alone in transformers.
"""

import numpy as np
import pytest
import torch

from prompt_tuning.predict import ensemble
from prompt_tuning.predict import rank_classification as ranking
from prompt_tuning.predict.predictor import Predictor
from prompt_tuning.prompts import Prompt, RaggedPromptBank
from prompt_tuning.prompts.ragged_bank import right_align
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5.network import EncoderDecoder
from prompt_tuning.train.model import PromptModel
from tests.t5_network_test import hf_model_and_params

CONFIG = t5_config.tiny()
H, S = CONFIG.emb_dim, 6
LENGTHS = (3, 5, 4)  # three prompts; the bank holds them right-aligned in P = 5
LABELS = np.array([[10, 11, 1, 0, 0, 0], [12, 1, 0, 0, 0, 0], [13, 14, 15, 1, 0, 0]], np.int32)


@pytest.fixture(scope="module")
def setup():
    hf, params = hf_model_and_params(CONFIG, seed=3)
    rng = np.random.default_rng(0)
    prompts = [rng.normal(0.0, 3.0, (p, H)).astype(np.float32) for p in LENGTHS]
    tokens = rng.integers(3, CONFIG.vocab_size, (4, 7)).astype(np.int32)
    tokens[0, 5:], tokens[2, 3:] = 0, 0  # padded rows
    batch = {"encoder_input_tokens": tokens, "decoder_target_tokens": np.zeros((4, S), np.int32)}
    return hf, params, prompts, batch


def _with_prompt(params, value):
    return dict(params, encoder=dict(params["encoder"], prompt=value))


def _hf_inputs(hf, prompt, tokens):
    """The prompt prepended to the embedded tokens, and the attention mask (prompt attended)."""
    ids = torch.tensor(tokens, dtype=torch.long)
    embedded = hf.shared(ids)  # [B, T, H]
    rows = torch.tensor(prompt)[None].expand(len(tokens), -1, -1)  # [B, p, H]
    mask = torch.cat([torch.ones(len(tokens), len(prompt)), torch.tensor(tokens > 0)], 1)
    return {"inputs_embeds": torch.cat([rows, embedded], 1), "attention_mask": mask.long()}


def hf_greedy(hf, prompt, tokens, length=S):
    """transformers' greedy decode `[B, length]` (start token dropped, 0 after EOS)."""
    with torch.no_grad():
        out = hf.generate(**_hf_inputs(hf, prompt, tokens), max_new_tokens=length, do_sample=False)
    out = out.numpy()[:, 1:]
    return np.pad(out, ((0, 0), (0, length - out.shape[1])))


def hf_scores(hf, prompt, tokens, targets):
    """Teacher-forced summed log-likelihood `[B]` of `targets [B, S]` (0 = not scored)."""
    decoder_inputs = torch.tensor(np.pad(targets, ((0, 0), (1, 0)))[:, :-1], dtype=torch.long)
    with torch.no_grad():
        logits = hf(**_hf_inputs(hf, prompt, tokens), decoder_input_ids=decoder_inputs).logits
    log_probs = torch.log_softmax(logits.double(), -1).numpy()  # [B, S, V]
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return np.where(targets > 0, picked, 0.0).sum(-1)


def hf_label_scores(hf, prompt, tokens, labels):
    """`[B, C]` log-likelihood of every label row for every example."""
    columns = [hf_scores(hf, prompt, tokens, np.tile(row, (len(tokens), 1))) for row in labels]
    return np.stack(columns, axis=1)


def test_one_prompt_decodes_scores_and_classifies_like_transformers(setup):
    hf, params, prompts, batch = setup
    prompt = prompts[0]
    model = PromptModel(EncoderDecoder(CONFIG, prompt=Prompt(length=len(prompt))))
    full = _with_prompt(params, {"prompt": prompt})
    predictor = Predictor(model)
    tokens = predictor.predict(full, batch)
    np.testing.assert_array_equal(tokens, hf_greedy(hf, prompt, batch["encoder_input_tokens"]))
    scored = dict(
        batch, decoder_target_tokens=tokens, decoder_input_tokens=ranking.shift_right(tokens)
    )
    np.testing.assert_allclose(
        predictor.score(full, scored),
        hf_scores(hf, prompt, batch["encoder_input_tokens"], tokens),
        atol=1e-4,
    )
    expected = hf_label_scores(hf, prompt, batch["encoder_input_tokens"], LABELS)
    np.testing.assert_allclose(predictor.label_scores(full, batch, LABELS), expected, atol=1e-4)
    np.testing.assert_array_equal(predictor.classify(full, batch, LABELS), expected.argmax(1))
    # Beam search: the best beam's score is its log-likelihood over T5X's brevity penalty.
    beam, beam_scores = Predictor(model, "beam", beam_size=3).predict_with_scores(full, batch)
    length = np.where((beam == 1).any(1), (beam == 1).argmax(1) + 1, S)
    penalty = ((5.0 + length) / 6.0) ** 0.6
    likelihood = hf_scores(hf, prompt, batch["encoder_input_tokens"], beam)
    np.testing.assert_allclose(beam_scores, likelihood / penalty, atol=1e-4)
    assert (
        beam_scores.shape == (4,) and Predictor(model).predict_with_scores(full, batch)[1] is None
    )


def test_ensemble_returns_each_prompts_outputs_as_if_alone(setup):
    hf, params, _, batch = setup
    rng = np.random.default_rng(5)
    prompts = [rng.normal(0.0, 3.0, (4, H)).astype(np.float32) for _ in range(3)]
    bank = PromptModel(EncoderDecoder(CONFIG, prompt=ensemble.bank_prompt(3, 4)))
    members = ensemble.PromptEnsemble(bank, 3)
    full = ensemble.bank_params(params, prompts)
    inputs = batch["encoder_input_tokens"]
    each = members.member_predictions(full, batch)  # [N, B, S]
    alone = [hf_greedy(hf, p, inputs) for p in prompts]
    np.testing.assert_array_equal(each, alone)
    assert len({a.tobytes() for a in alone}) > 1  # the prompts decode differently
    targets = dict(batch, decoder_target_tokens=alone[0])
    targets["decoder_input_tokens"] = ranking.shift_right(alone[0])
    np.testing.assert_allclose(
        members.member_scores(full, targets),
        [hf_scores(hf, p, inputs, alone[0]) for p in prompts],
        atol=1e-4,
    )
    choices = members.member_choices(full, batch, LABELS)  # [N, B]
    np.testing.assert_array_equal(
        choices, [hf_label_scores(hf, p, inputs, LABELS).argmax(1) for p in prompts]
    )
    # The vote of those outputs is what the ensemble predicts (ties: the earliest prompt).
    np.testing.assert_array_equal(members.predict(full, batch), members.vote_predictions(each))
    np.testing.assert_array_equal(
        members.classify(full, batch, LABELS), members.vote_choices(choices)
    )


def test_ragged_bank_serves_each_row_with_its_prompt_as_if_alone(setup):
    hf, params, prompts, batch = setup
    length, capacity = max(LENGTHS), 4
    table = np.zeros((capacity, length, H), np.float32)
    for i, prompt in enumerate(prompts):
        table[i] = right_align(prompt, length)
    lengths = np.array([*LENGTHS, 0], np.int32)
    model = PromptModel(EncoderDecoder(CONFIG, prompt=RaggedPromptBank(capacity, length, H)))
    full = _with_prompt(params, {"prompt": table, "lengths": lengths})
    rows = np.array([2, 0, 1, 2], np.int32)
    limits = np.array([6, 2, 4, 6], np.int32)
    predictor = Predictor(model)
    tokens = predictor.predict(full, dict(batch, task_ids=rows, decode_lengths=limits))
    labels = predictor.classify(full, dict(batch, task_ids=rows), LABELS)
    inputs = batch["encoder_input_tokens"]
    for b, (row, limit) in enumerate(zip(rows, limits)):
        alone = hf_greedy(hf, prompts[row], inputs[b : b + 1], int(limit))[0]
        np.testing.assert_array_equal(tokens[b, :limit], alone)
        assert not tokens[b, limit:].any()  # a row stops at its own length
        ranked = hf_label_scores(hf, prompts[row], inputs[b : b + 1], LABELS)[0]
        assert labels[b] == ranked.argmax()
    with pytest.raises(ValueError, match="Unknown decode_method"):
        Predictor(model, "sample")
    with pytest.raises(ValueError, match="Unknown program kind"):
        predictor.compile("sample", full, batch)
