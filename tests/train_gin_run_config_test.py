"""train/gin_utils.read_run_config: a run's config.gin back as a `builder.RunConfig`."""

import pytest

from prompt_tuning.train import gin_utils, optimizers

CONFIG = """
include 'gin_configs/models/t5_1_1_tiny_pretrained.gin'
include 'gin_configs/prompts/prompt_tuning_random_uniform.gin'
include 'gin_configs/runs/prompt_finetune.gin'
MODEL_DIR = '/tmp/unused'
MIXTURE_OR_TASK_NAME = 'builtin_keyword'
TRAIN_STEPS = 10
ACTIVATION_DTYPE = "float32"
RANDOM_SEED = 7
"""


def test_a_run_config_gin_is_read_with_references_evaluated(tmp_path):
    (tmp_path / "config.gin").write_text(CONFIG)
    run = gin_utils.read_run_config(tmp_path)
    assert run.model_dir == tmp_path
    # The embedded tiny T5 (128 wide, 3 encoder layers) and the run file's prompt length.
    assert (run.model.config.emb_dim, run.model.config.num_encoder_layers) == (128, 3)
    assert run.model.prompt.length == 100
    # `@pretrained.tiny_t5_checkpoint()` is evaluated to the packaged checkpoint's path.
    assert run.initial_checkpoint_path.endswith("pretrained/t5_tiny/checkpoint_2500")
    assert (run.task, run.random_seed) == ("builtin_keyword", 7)
    assert run.trainable_params_regex == optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX
    # The run file's FROZEN_DTYPE = %ACTIVATION_DTYPE follows the override; BATCH_SIZE = 32.
    assert (run.frozen_dtype, run.batch_size) == ("float32", 32)


def test_missing_config_and_unbound_macros_are_named(tmp_path):
    with pytest.raises(gin_utils.GinConfigError, match=r"config\.gin does not exist"):
        gin_utils.read_run_config(tmp_path)
    (tmp_path / "config.gin").write_text("RANDOM_SEED = 3\n")
    with pytest.raises(gin_utils.GinConfigError, match="does not bind the macro MODEL"):
        gin_utils.read_run_config(tmp_path)
    with gin_utils.fresh_gin() as config:
        gin_utils.parse_gin_files([tmp_path / "config.gin"])
        assert gin_utils.gin_macro(config, "RANDOM_SEED") == 3
        assert gin_utils.gin_macro(config, "BATCH_SIZE", None) is None
    with gin_utils.fresh_gin() as config:  # cleared on entry
        assert gin_utils.gin_macro(config, "RANDOM_SEED", "unbound") == "unbound"
