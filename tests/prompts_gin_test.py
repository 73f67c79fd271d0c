"""Every gin file in gin_configs/prompts/ parses, builds its PROMPT and runs in the tiny T5."""

import pathlib

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.t5 import checkpoints, network
from prompt_tuning.t5 import config as t5_config

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin_configs" / "prompts"
GIN_FILES = sorted(p.name for p in GIN_DIR.glob("*.gin"))
CONFIG = t5_config.tiny(num_decoder_layers=1)  # H = 32, V = 128, 2 encoder layers
INPUTS = jnp.array([[12, 7, 44, 9, 1], [30, 5, 1, 0, 0]], jnp.int32)


@pytest.fixture(name="macros", scope="module")
def _macros(tmp_path_factory):
    """Binds the macros model and run files provide, to a tiny setup made here."""
    tmp = tmp_path_factory.mktemp("prompts_gin")
    model = network.EncoderDecoder(CONFIG)
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), INPUTS, INPUTS, INPUTS))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params["params"])
    params["token_embedder"]["embedding"] = np.random.default_rng(0).normal(
        size=(CONFIG.vocab_size, CONFIG.emb_dim)
    )
    params["encoder"]["prompt"] = {"prompt": np.ones((100, CONFIG.emb_dim), np.float32)}
    checkpoint = str(tmp / "checkpoint_0")
    checkpoints.save_t5x_checkpoint(params, checkpoint)
    prompt_file = str(tmp / "prompt.npy")
    np.save(prompt_file, np.full((100, CONFIG.emb_dim), 2.0, np.float32))
    sources = [str(tmp / f"source_{i}.npy") for i in range(2)]
    for i, path in enumerate(sources):
        np.save(path, np.full((100, CONFIG.emb_dim), 3.0 + i, np.float32))
    return (
        f"""
        from __gin__ import dynamic_registration
        import seqio
        INITIAL_CHECKPOINT_PATH = "{checkpoint}"
        PROMPT_CHECKPOINT_PATH = "{checkpoint}"
        PROMPT_FILE = "{prompt_file}"
        SOURCE_PROMPTS = {sources}
        MPT_SOURCE = "{prompt_file}"
        TEACHER_PROMPTS = ["{prompt_file}", "{prompt_file}"]
        VOCABULARY = @seqio.ByteVocabulary()
        LABELS = ["positive", "negative"]
        NUM_ENCODER_LAYERS = {CONFIG.num_encoder_layers}
        NUM_TASKS = 2
        TASK_FEATURE_LENGTHS = {{"inputs": {INPUTS.shape[1] + 3}, "targets": 4}}
    """,
        params,
    )


def test_every_parameterization_has_a_gin_file():
    expected = {
        "prompt_tuning_class_labels.gin", "prompt_tuning_random_uniform.gin",
        "prompt_tuning_sampled_vocab.gin", "prompt_tuning_from_npy.gin",
        "prompt_tuning_from_checkpoint.gin", "structured_linear.gin", "structured_low_rank.gin",
        "structured_mlp.gin", "dpt.gin", "rank_probe.gin", "residual.gin", "idpg_dense.gin",
        "idpg_phm.gin", "m_idpg_phm.gin", "deep_prompt.gin", "prompt_bank.gin", "attempt.gin",
        "dept.gin", "mpt.gin", "mpt_source.gin",
    }  # fmt: skip
    assert expected <= set(GIN_FILES)
    for name in GIN_FILES:
        text = (GIN_DIR / name).read_text()
        assert "# Provides:" in text and "# Requires:" in text, name
        assert f"--gin_file=gin_configs/prompts/{name}" in text, name


@pytest.mark.parametrize("name", GIN_FILES)
def test_gin_file_builds_a_prompt_that_runs_in_t5(name, macros):
    bindings, params = macros
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(GIN_DIR / name)], [bindings])
        length = gin.query_parameter("%PROMPT_LENGTH")
        module = gin.query_parameter("%PROMPT").scoped_configurable_fn()
    finally:
        gin.clear_config()
    assert isinstance(module, nn.Module) and module.length == length
    model = network.EncoderDecoder(CONFIG, prompt=module)
    task_ids = jnp.array([1, 0], jnp.int32)
    (encoded, mask), variables = model.init_with_output(
        jax.random.key(0), INPUTS, task_ids, method=model.encode
    )
    assert encoded.shape == (2, length + INPUTS.shape[1], CONFIG.emb_dim)
    assert mask.shape == (2, length + INPUTS.shape[1])
    prompt_params = nn.unbox(variables["params"]["encoder"]["prompt"])
    if name == "prompt_tuning_from_npy.gin":
        np.testing.assert_array_equal(prompt_params["prompt"], 2.0)
    elif name == "mpt.gin":  # starts from the source's P* (here the 2.0 file), u = v = 1
        np.testing.assert_array_equal(prompt_params["shared"], 2.0)
        np.testing.assert_array_equal(prompt_params["u"], 1.0)
    elif name == "prompt_tuning_from_checkpoint.gin":
        np.testing.assert_array_equal(prompt_params["prompt"], 1.0)
    elif name == "prompt_tuning_class_labels.gin":
        table = params["token_embedder"]["embedding"]
        positive = np.asarray([table[i] for i in np.frombuffer(b"positive", np.uint8) + 3])
        np.testing.assert_allclose(prompt_params["prompt"][0], positive.mean(0), rtol=1e-5)
    elif name == "attempt.gin":  # NUM_TASKS = 2 target prompts, each a copy of source 0
        np.testing.assert_array_equal(prompt_params["prompt"], 3.0)
        assert prompt_params["prompt"].shape == (2, length, CONFIG.emb_dim)
    elif name == "prompt_tuning_random_uniform.gin":
        assert float(jnp.abs(prompt_params["prompt"]).max()) <= 0.5
    if getattr(module, "per_layer", False):
        assert module.num_layers == CONFIG.num_encoder_layers
