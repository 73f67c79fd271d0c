"""The macros the README says keep T5X's names and meaning, against T5X's own gin files.

T5X's macros are kept here as data (google-research/t5x `t5x/configs/runs/{finetune,eval,infer}.gin`
and the T5 1.1 model files `t5x/examples/t5/t5_1_1/*.gin`): each with the file that defines it,
its default there and the argument T5X binds it to. When T5X is importable the data is checked
against those files. The meanings that differ from a plain pass-through are tested where they live:
TRAIN_STEPS in `train_steps_test.py`, LOSS_NORMALIZING_FACTOR in `train_losses_test.py`.
"""

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED = "%gin.REQUIRED"

# macro -> (T5X file, its value there, the T5X argument it is bound to).
T5X_MACROS = {
    "MODEL_DIR": ("configs/runs/finetune.gin", REQUIRED, "train_script.train.model_dir"),
    "MIXTURE_OR_TASK_NAME": (
        "configs/runs/finetune.gin", REQUIRED, "utils.DatasetConfig.mixture_or_task_name",
    ),
    "MIXTURE_OR_TASK_MODULE": ("configs/runs/finetune.gin", "None", "utils.DatasetConfig.module"),
    "TASK_FEATURE_LENGTHS": (
        "configs/runs/finetune.gin", REQUIRED, "utils.DatasetConfig.task_feature_lengths",
    ),
    "TRAIN_STEPS": ("configs/runs/finetune.gin", REQUIRED, "train_script.train.total_steps"),
    "BATCH_SIZE": ("configs/runs/finetune.gin", "128", "utils.DatasetConfig.batch_size"),
    "INITIAL_CHECKPOINT_PATH": (
        "configs/runs/finetune.gin", REQUIRED, "utils.RestoreCheckpointConfig.path",
    ),
    "EVAL_PERIOD": ("configs/runs/finetune.gin", "1000", "train_script.train.eval_period"),
    "EVAL_STEPS": ("configs/runs/finetune.gin", "20", "train_script.train.eval_steps"),
    "RANDOM_SEED": ("configs/runs/finetune.gin", "None", "train_script.train.random_seed"),
    "DROPOUT_RATE": ("configs/runs/finetune.gin", "0.1", "network.T5Config.dropout_rate"),
    "LOSS_NORMALIZING_FACTOR": (
        "examples/t5/t5_1_1/base.gin", "None", "models.EncoderDecoderModel.loss_normalizing_factor",
    ),
    "Z_LOSS": ("examples/t5/t5_1_1/base.gin", "0.0001", "models.EncoderDecoderModel.z_loss"),
    "LABEL_SMOOTHING": (
        "examples/t5/t5_1_1/base.gin", "0.0", "models.EncoderDecoderModel.label_smoothing",
    ),
    "CHECKPOINT_PATH": ("configs/runs/eval.gin", REQUIRED, "utils.RestoreCheckpointConfig.path"),
    "EVAL_OUTPUT_DIR": ("configs/runs/eval.gin", REQUIRED, "eval_script.evaluate.output_dir"),
    "INFER_OUTPUT_DIR": ("configs/runs/infer.gin", REQUIRED, "infer_script.infer.output_dir"),
}  # fmt: skip

# Where our gin files bind each macro the README claims (file, `configurable.argument`).
OURS = {
    "MODEL_DIR": ("runs/prompt_finetune.gin", "trainer.train.model_dir"),
    "MIXTURE_OR_TASK_NAME": ("runs/prompt_finetune.gin", "trainer.train.mixture_or_task_name"),
    "MIXTURE_OR_TASK_MODULE": ("runs/prompt_finetune.gin", "trainer.train.mixture_or_task_module"),
    "TASK_FEATURE_LENGTHS": ("runs/prompt_finetune.gin", "trainer.train.task_feature_lengths"),
    "TRAIN_STEPS": ("runs/prompt_finetune.gin", "trainer.train.train_steps"),
    "BATCH_SIZE": ("runs/prompt_finetune.gin", "trainer.train.batch_size"),
    "INITIAL_CHECKPOINT_PATH": (
        "runs/prompt_finetune.gin", "trainer.train.initial_checkpoint_path",
    ),
    "EVAL_PERIOD": ("runs/prompt_finetune.gin", "trainer.train.eval_period"),
    "DROPOUT_RATE": ("models/t5_1_1_base.gin", "t5_config.t5_1_1.dropout_rate"),
    "LOSS_NORMALIZING_FACTOR": (
        "runs/prompt_finetune.gin", "trainer.train.loss_normalizing_factor",
    ),
    "Z_LOSS": ("runs/prompt_finetune.gin", "trainer.train.z_loss"),
    "LABEL_SMOOTHING": ("runs/prompt_finetune.gin", "trainer.train.label_smoothing"),
}  # fmt: skip


def _readme_claims() -> list[str]:
    """The backquoted macros of the README sentence "The macros keep T5X's names and meaning"."""
    text = (ROOT / "README.md").read_text()
    start = text.index("The macros keep T5X's names and meaning:")
    sentence = text[start : text.index("(", start)]
    return re.findall(r"`([A-Z_]+)`", sentence)


def _binds(text: str, configurable: str, argument: str, macro: str) -> bool:
    """Whether gin text binds `[scope/]configurable.argument = %macro` (inline or in a block)."""
    name = rf"^(\w+/)?{re.escape(configurable)}"
    inline = rf"{name}\.{argument}\s*=\s*%{macro}\b"
    block = rf"{name}:\n(?:[ \t]+.*\n|#.*\n)*?[ \t]+{argument}\s*=\s*%{macro}\b"
    return bool(re.search(inline, text, re.M) or re.search(block, text, re.M))


def test_readme_claims_only_t5x_macros():
    claims = _readme_claims()
    assert len(claims) == len(set(claims)) >= 12
    assert set(claims) <= set(T5X_MACROS), set(claims) - set(T5X_MACROS)
    assert "TRAIN_STEPS" in claims and "LOSS_NORMALIZING_FACTOR" in claims
    # Same name, narrower meaning: listed apart in the README, not claimed.
    assert not {"RANDOM_SEED", "EVAL_STEPS"} & set(claims)


@pytest.mark.parametrize("macro", sorted(OURS))
def test_our_gin_files_bind_the_claimed_macros_to_the_same_argument(macro):
    path, binding = OURS[macro]
    configurable, _, argument = binding.rpartition(".")
    text = (ROOT / "gin_configs" / path).read_text()
    assert _binds(text, configurable, argument, macro), (path, binding)
    assert set(_readme_claims()) == set(OURS)


def test_train_steps_is_required_as_in_t5x_finetune():
    text = (ROOT / "gin_configs" / "runs" / "prompt_finetune.gin").read_text()
    assert re.search(r"^TRAIN_STEPS = %gin.REQUIRED$", text, re.M)
    assert re.search(r"^LOSS_NORMALIZING_FACTOR = None$", text, re.M)  # T5X's default: the sum
    assert re.search(r"^Z_LOSS = 1e-4$", text, re.M)  # T5 1.1's 0.0001


T5X_SPEC = importlib.util.find_spec("t5x")


@pytest.mark.skipif(T5X_SPEC is None, reason="T5X is not installed (see the README)")
@pytest.mark.parametrize("macro", sorted(T5X_MACROS))
def test_t5x_data_matches_t5x_gin_files(macro):
    t5x_dir = pathlib.Path(T5X_SPEC.submodule_search_locations[0])
    path, default, binding = T5X_MACROS[macro]
    values = re.findall(rf"^{macro} = (.+?)\s*(?:#.*)?$", (t5x_dir / path).read_text(), re.M)
    assert values and values[-1] == default, (macro, values)  # the last binding wins in gin
    # The binding may live in another of the files (DROPOUT_RATE: in the model file).
    files = {p for p, _, _ in T5X_MACROS.values()}
    text = "\n".join((t5x_dir / p).read_text() for p in sorted(files))
    configurable, _, argument = binding.rpartition(".")
    assert _binds(text, configurable, argument, macro), (path, binding)
