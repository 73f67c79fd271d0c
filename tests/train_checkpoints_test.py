"""Prompt export (`.npy`) of reparameterized prompts, and prompt file checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.train import checkpoints

B, T, H = 2, 3, 16


@pytest.mark.parametrize(
    "module",
    [
        prompts.Prompt(length=5),
        prompts.DecomposedPrompt(length=5, bottleneck=2),
        prompts.ResidualPrompt(length=5, bottleneck=4),
    ],
    ids=lambda m: type(m).__name__,
)
def test_exported_prompt_is_what_the_module_prepends(module, tmp_path):
    tokens = jnp.ones((B, T), jnp.int32)
    embedded = jnp.zeros((B, T, H))
    variables = module.init(jax.random.key(0), tokens, embedded)
    prepended = np.asarray(module.apply(variables, tokens, embedded))  # [B, P, H]
    trainable = {"encoder": {"prompt": jax.device_get(variables["params"])}}
    exported = checkpoints.prompt_for_export(module, trainable)
    assert exported.shape == (5, H)
    np.testing.assert_allclose(exported, prepended[0], rtol=1e-5, atol=1e-6)
    path = checkpoints.export_prompt(tmp_path, "step_3", exported)
    assert path == tmp_path / "prompts" / "step_3.npy"
    np.testing.assert_array_equal(checkpoints.load_prompt_npy(path, (5, H)), exported)


def test_prompt_file_errors_name_the_file_and_shapes(tmp_path):
    with pytest.raises(FileNotFoundError, match="PROMPT_FILE .*missing.npy does not exist"):
        checkpoints.load_prompt_npy(tmp_path / "missing.npy")
    np.save(tmp_path / "flat.npy", np.zeros(7, np.float32))
    with pytest.raises(ValueError, match=r"flat.npy holds shape \(7,\); a prompt is \[P, H\]"):
        checkpoints.load_prompt_npy(tmp_path / "flat.npy")


def test_no_export_without_a_prompt():
    assert checkpoints.prompt_for_export(None, {"encoder": {}}) is None
