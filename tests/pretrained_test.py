"""The embedded tiny pretrained T5: loadable, as its card says, and reproducible by its script."""

import json
import os

import jax
import numpy as np
import pytest
import sentencepiece

from prompt_tuning import pretrained
from prompt_tuning.t5 import checkpoints, decoding
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5.network import EncoderDecoder
from tasks import builtin, pretraining, vocabularies
from tools import pretrain_tiny


@pytest.fixture(scope="module")
def card():
    with open(os.path.join(pretrained.TINY_T5_DIR, "card.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def loaded():
    return checkpoints.load_checkpoint(pretrained.tiny_t5_checkpoint())


def test_checkpoint_loads_with_the_config_of_its_card(card, loaded):
    config, params = loaded
    assert config == pretrained.tiny_t5_config()
    assert config.emb_dim == card["config"]["emb_dim"]
    assert config.num_encoder_layers == card["config"]["num_encoder_layers"]
    assert t5_config.num_params(config) == card["parameters"]
    assert sum(np.size(x) for x in jax.tree.leaves(params)) == card["parameters"]
    assert (
        os.path.basename(pretrained.tiny_t5_checkpoint())
        == f"checkpoint_{card['training']['steps']}"
    )


def test_vocabulary_fits_the_model_and_labels_are_single_pieces(card, loaded):
    config, _ = loaded
    vocabulary = vocabularies.tiny_vocabulary()
    assert vocabulary.vocab_size == card["config"]["sentencepiece_pieces"] <= config.vocab_size
    for labels in builtin.LABELS.values():
        for label in labels:
            assert len(vocabulary.encode(label)) == 1, label


@pytest.mark.parametrize("kind", sorted(builtin.LABELS))
def test_model_solves_the_prefixed_built_in_tasks(loaded, kind):
    """The card's claim, on the built-in validation split (held out from pretraining)."""
    config, params = loaded
    processor = sentencepiece.SentencePieceProcessor(model_file=vocabularies.TINY_SPM_PATH)
    prefix = pretraining.FAMILIES[kind][0]
    texts, labels = builtin.generate_examples(kind, "validation", prefix)
    inputs = np.array([pretrain_tiny.encode(processor, t, 32) for t in texts[:200]], np.int32)
    model = EncoderDecoder(config)
    decoded = np.asarray(decoding.greedy_decode(model, params, inputs, 4))
    predictions = [processor.decode([int(t) for t in row if t > 1]) for row in decoded]
    accuracy = np.mean([p == y for p, y in zip(predictions, labels[:200], strict=True)])
    assert accuracy >= 0.9  # card.json: keyword 1.0, topic 1.0, sentiment 0.94


def test_vocabulary_training_reproduces_the_committed_model(tmp_path, card):
    path = pretrain_tiny.train_vocabulary(str(tmp_path), 512, 20_000)

    def pieces(model_file):  # The file also records the temporary paths it was trained from.
        processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
        return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(len(processor))]

    assert pieces(path) == pieces(vocabularies.TINY_SPM_PATH)


def test_script_writes_a_loadable_checkpoint_vocabulary_and_card(tmp_path):
    output = tmp_path / "tiny"
    flags = ["--output", str(output), "--steps", "3", "--batch", "4", "--layers", "1"]
    flags += ["--emb-dim", "32", "--mlp-dim", "64", "--num-heads", "2", "--vocab-examples", "500"]
    card = pretrain_tiny.main(flags + ["--eval-examples", "8", "--log-every", "1"])
    again = pretrain_tiny.main(
        [
            *flags[:1],
            str(tmp_path / "again"),
            *flags[2:],
            "--eval-examples",
            "8",
            "--log-every",
            "1",
        ]
    )
    assert again["loss_history"] == card["loss_history"]  # seeded: a rerun reproduces the run
    assert [h["step"] for h in card["loss_history"]] == [1, 2, 3]
    config, params = checkpoints.load_checkpoint(output / "checkpoint_3")
    assert config == pretrained.tiny_t5_config(str(output))
    assert config.emb_dim == 32 and config.num_encoder_layers == 1
    assert set(card["held_out_exact_match"]) <= set(card["corpus"])
    assert (output / "sentencepiece.model").exists()
    _, rerun = checkpoints.load_checkpoint(tmp_path / "again" / "checkpoint_3")
    for got, want in zip(jax.tree.leaves(rerun), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(got, want)
