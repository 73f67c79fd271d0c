"""tools/convert_checkpoint.py: T5X -> HF -> T5X round trip, transformers' logits, dropped parts."""

import numpy as np
import pytest
import transformers

from prompt_tuning.t5 import checkpoints, network
from prompt_tuning.t5 import config as t5_config
from tests.t5_network_test import hf_logits, shift_right
from tools import convert_checkpoint

ENCODER = np.array([[5, 9, 17, 33, 2, 1], [7, 21, 1, 0, 0, 0]], np.int32)
TARGETS = np.array([[11, 12, 1, 0], [13, 14, 15, 1]], np.int32)


def random_params(config, seed=0):
    """Random weights of every parameter `config` has (norm scales near 1)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in checkpoints.expected_shapes(config).items():
        scale = 0.1 if name.endswith("/scale") else 1.0 / np.sqrt(shape[0])
        flat[name] = (1.0 if name.endswith("/scale") else 0.0) + scale * rng.normal(size=shape)
        flat[name] = flat[name].astype(np.float32)
    return checkpoints.unflatten(flat)


def our_logits(config, params):
    return np.asarray(
        network.EncoderDecoder(config).apply(
            {"params": params}, ENCODER, shift_right(TARGETS), TARGETS, enable_dropout=False
        )
    )


def assert_same_tree(a, b):
    fa, fb = checkpoints.flatten(a), checkpoints.flatten(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        np.testing.assert_array_equal(np.asarray(fa[name]), np.asarray(fb[name]), err_msg=name)


def test_t5x_hf_t5x_round_trip_and_transformers_logits(tmp_path):
    config = t5_config.tiny(vocab_size=64)  # T5 1.1: gated GELU, untied logits
    params = random_params(config)
    checkpoints.save_t5x_checkpoint(params, tmp_path / "checkpoint_0")
    to_hf = convert_checkpoint.main(
        [f"--input={tmp_path / 'checkpoint_0'}", f"--output={tmp_path / 'hf'}", "--to=hf"]
    )
    assert to_hf.config == config and to_hf.dropped == []
    back = convert_checkpoint.main(
        [f"--input={tmp_path / 'hf'}", f"--output={tmp_path / 'checkpoint_7'}", "--to=t5x"]
    )
    assert not back.untied
    _, loaded = checkpoints.load_checkpoint(tmp_path / "checkpoint_7")
    assert_same_tree(loaded, params)
    model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    real = TARGETS > 0  # padded target positions are masked differently (and never used)
    want, got = hf_logits(model, ENCODER, TARGETS)[real], our_logits(config, params)[real]
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_tied_unscaled_model_is_written_untied_to_t5x_with_the_same_logits(tmp_path):
    config = t5_config.tiny(vocab_size=64, logits_via_embedding=True, scale_tied_logits=False)
    params = random_params(config, seed=1)
    checkpoints.save_hf_checkpoint(params, config, tmp_path / "hf5", transformers_version=5)
    result = convert_checkpoint.main(
        [f"--input={tmp_path / 'hf5'}", f"--output={tmp_path / 'checkpoint_0'}", "--to=t5x"]
    )
    assert result.untied
    loaded_config, loaded = checkpoints.load_checkpoint(tmp_path / "checkpoint_0")
    assert not loaded_config.logits_via_embedding
    np.testing.assert_array_equal(
        loaded["decoder"]["logits_dense"]["kernel"], params["token_embedder"]["embedding"].T
    )
    np.testing.assert_allclose(
        our_logits(loaded_config, loaded), our_logits(config, params), rtol=1e-5, atol=1e-5
    )


def test_prompt_of_a_prompt_tuned_checkpoint_is_not_written_to_hf(tmp_path, capsys):
    config = t5_config.tiny(vocab_size=64)
    params = random_params(config, seed=2)
    tuned = dict(params, encoder=dict(params["encoder"], prompt={"prompt": np.ones((3, 32))}))
    checkpoints.save_t5x_checkpoint(tuned, tmp_path / "checkpoint_0")
    result = convert_checkpoint.main(
        [
            f"--input={tmp_path / 'checkpoint_0'}",
            f"--output={tmp_path / 'hf'}",
            "--to=hf",
            "--transformers_version=5",
        ]
    )
    assert result.dropped == ["encoder/prompt/prompt"]
    assert "Not written (a Hugging Face T5 has no prompt): encoder/prompt/prompt" in (
        capsys.readouterr().out
    )
    _, loaded = checkpoints.load_checkpoint(tmp_path / "hf")
    assert_same_tree(loaded, params)
    with pytest.raises(checkpoints.CheckpointError, match="already exists"):
        convert_checkpoint.main(
            [f"--input={tmp_path / 'checkpoint_0'}", f"--output={tmp_path / 'hf'}", "--to=hf"]
        )
