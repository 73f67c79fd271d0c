"""The T5 families' gin model files against T5X's own gin files, and a run from a folder alone.

T5X's gin files (`../shared/t5x/t5x/examples/t5/{t5_1_1,mt5,byt5}/*.gin`,
`.../scalable_t5/{mt5/*.gin,umt5/vocab.gin}`) are read as data: every size our files build must be
theirs. The end-to-end run trains a prompt on a transformers UMT5 folder with no model gin file.
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

import gin
import pytest
import seqio

from prompt_tuning.t5 import hf_format
from prompt_tuning.train import gin_utils

ROOT = pathlib.Path(__file__).resolve().parents[1]
T5X = pathlib.Path(__file__).resolve().parents[2] / "shared" / "t5x"
needs_t5x = pytest.mark.skipif(not T5X.exists(), reason="T5X sources (../shared/t5x) absent")
PROMPT = "gin_configs/prompts/prompt_tuning_random_uniform.gin"
RUN = "gin_configs/runs/prompt_finetune.gin"
SIZES = ("small", "base", "large", "xl", "xxl")
# family -> (T5X gin file of a size, T5X's vocabulary size or None: the one in that file).
T5X_FILES = {
    "flan_t5": ("t5x/examples/t5/t5_1_1/{}.gin", None),
    "mt5": ("t5x/examples/t5/mt5/{}.gin", None),
    "byt5": ("t5x/examples/t5/byt5/{}.gin", None),
    "umt5": ("t5x/examples/scalable_t5/mt5/{}.gin", "t5x/examples/scalable_t5/umt5/vocab.gin"),
}
VOCABULARIES = {  # family -> (vocabulary class, extra ids, file)
    "flan_t5": (seqio.SentencePieceVocabulary, 100, "cc_all.32000.100extra"),
    "mt5": (seqio.SentencePieceVocabulary, 100, "mc4.250000.100extra"),
    "umt5": (seqio.SentencePieceVocabulary, 300, "umt5.256000"),
    "byt5": (seqio.ByteVocabulary, None, None),
}


@pytest.fixture(autouse=True)
def clean_gin(monkeypatch):
    for env in (
        "PROMPT_TUNING_SPM_PATH",
        "PROMPT_TUNING_MT5_SPM_PATH",
        "PROMPT_TUNING_UMT5_SPM_PATH",
    ):
        monkeypatch.delenv(env, raising=False)  # the public paths, as the files name them
    gin.clear_config()
    yield
    gin.clear_config()


def _t5x_config(relative: str) -> dict:
    """`network.T5Config`'s bindings in a T5X gin file, after the files it includes."""
    text = (T5X / relative).read_text()
    values = {}
    for include in re.findall(r"^include ['\"](.+?)['\"]", text, re.M):
        values.update(_t5x_config(include))
    block = re.search(r"^network\.T5Config:\n((?:  .*\n?)+)", text, re.M)
    for line in block.group(1).splitlines() if block else ():
        key, value = (part.strip() for part in line.split("#")[0].split("=", 1))
        if not value.startswith("%"):
            values[key] = ast.literal_eval(value)
    return values


def _build(macro):
    return gin.query_parameter(f"%{macro}").scoped_configurable_fn()


def _parse(model_file, *flags):
    gin_utils.parse_gin_flags(
        [
            f"--gin_file={model_file}",
            f"--gin_file={PROMPT}",
            f"--gin_file={RUN}",
            "--gin.MODEL_DIR='/tmp/unused'",
            "--gin.MIXTURE_OR_TASK_NAME='builtin_keyword'",
            *flags,
        ]
    )


def _model_config(model_file):
    _parse(model_file, "--gin.TRAIN_STEPS=1", "--gin.INITIAL_CHECKPOINT_PATH='/x'")
    gin_utils.check_macros(["MODEL", "VOCABULARY", "NUM_ENCODER_LAYERS"])
    return _build("MODEL").config


@needs_t5x
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("family", sorted(T5X_FILES))
def test_family_gin_file_builds_t5xs_sizes(family, size):
    config = _model_config(ROOT / "gin_configs" / "models" / f"{family}_{size}.gin")
    gin_file, vocab_file = T5X_FILES[family]
    theirs = _t5x_config(gin_file.format(size))
    for field in ("emb_dim", "num_heads", "num_encoder_layers", "num_decoder_layers", "head_dim"):
        assert getattr(config, field) == theirs[field], field
    assert config.mlp_dim == theirs["mlp_dim"]
    assert tuple(config.mlp_activations) == tuple(theirs["mlp_activations"])
    assert config.logits_via_embedding == theirs["logits_via_embedding"]
    if vocab_file:
        vocab_size = re.search(r"VOCAB_SIZE = (\d+)", (T5X / vocab_file).read_text()).group(1)
        assert config.vocab_size == int(vocab_size)
    else:
        assert config.vocab_size == theirs["vocab_size"]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("family", sorted(T5X_FILES))
def test_family_gin_file_names_its_checkpoint_vocabulary_and_layers(family, size):
    model_file = ROOT / "gin_configs" / "models" / f"{family}_{size}.gin"
    header = [line for line in model_file.read_text().splitlines() if line.startswith("#")]
    assert header and model_file.read_text().startswith("# ")
    config = _model_config(model_file)
    assert config.relative_attention_per_layer == (family == "umt5")
    if family == "byt5":  # the encoder three times deeper than the decoder
        assert config.num_encoder_layers == 3 * config.num_decoder_layers
    assert gin.query_parameter("%NUM_ENCODER_LAYERS") == config.num_encoder_layers
    assert config.dropout_rate == 0.1  # the run file's DROPOUT_RATE

    vocabulary = _build("VOCABULARY")
    cls, extra_ids, spm = VOCABULARIES[family]
    assert isinstance(vocabulary, cls)
    if spm:
        assert vocabulary.extra_ids == extra_ids
        assert f"/vocabs/{spm}/sentencepiece.model" in vocabulary.sentencepiece_model_file
    else:
        assert vocabulary.vocab_size <= config.vocab_size

    gin.clear_config()
    if family == "umt5" and size == "large":  # T5X publishes no umT5 Large checkpoint
        _parse(model_file, "--gin.TRAIN_STEPS=1")
        with pytest.raises(ValueError, match="INITIAL_CHECKPOINT_PATH is required"):
            gin_utils.check_macros([])
        return
    _parse(model_file, "--gin.TRAIN_STEPS=1")
    checkpoint = gin.query_parameter("%INITIAL_CHECKPOINT_PATH")
    assert checkpoint.startswith("gs://t5-data/pretrained_models/t5x/")
    assert any(checkpoint in line for line in header)  # the path is written in the header
    step = int(checkpoint.rsplit("_", 1)[1])
    steps = re.search(r"--gin\.TRAIN_STEPS=(\d+)", "\n".join(header)).group(1)
    assert int(steps) == step + 30_000  # the header's command trains 30K steps from there


def _tiny_umt5_folder(path, vocab_size=512):
    """A tiny random transformers UMT5 (the built-in tasks' 512-piece vocabulary)."""
    import torch
    import transformers

    config = transformers.UMT5Config(
        vocab_size=vocab_size,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=3,
        tie_word_embeddings=False,
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    transformers.UMT5ForConditionalGeneration(config).save_pretrained(path)
    return path


def test_from_checkpoint_gin_takes_the_architecture_from_config_json(tmp_path):
    folder = _tiny_umt5_folder(tmp_path / "umt5", vocab_size=71)
    _parse(
        "gin_configs/models/from_checkpoint.gin",
        "--gin.TRAIN_STEPS=1",
        f"--gin.INITIAL_CHECKPOINT_PATH='{folder}'",
        "--gin.VOCABULARY=%UMT5_VOCABULARY",
    )
    gin_utils.check_macros(["MODEL", "VOCABULARY"])
    config = _build("MODEL").config
    run_dtype = gin.query_parameter("%ACTIVATION_DTYPE")  # the run file's
    assert config == hf_format.read_config(folder).replace(dropout_rate=0.1, dtype=run_dtype)
    assert config.relative_attention_per_layer and config.num_decoder_layers == 1
    assert _build("VOCABULARY").extra_ids == 300


def _train(model_file, folder, model_dir, timeout=300):
    command = [
        sys.executable,
        "-m",
        "prompt_tuning.train",
        f"--gin_file={model_file}",
        f"--gin_file={PROMPT}",
        f"--gin_file={RUN}",
        f"--gin.INITIAL_CHECKPOINT_PATH='{folder}'",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.MIXTURE_OR_TASK_NAME='builtin_keyword'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
        "--gin.TRAIN_STEPS=2",
        "--gin.BATCH_SIZE=4",
        "--gin.PROMPT_LENGTH=3",
        "--gin.EVAL_PERIOD=1000",
        "--gin.SAVE_PERIOD=1000",
    ]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_transformers_umt5_folder_trains_with_no_model_gin_file(tmp_path):
    folder = _tiny_umt5_folder(tmp_path / "umt5")
    done = _train("gin_configs/models/from_checkpoint.gin", folder, tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 2/2 | loss" in done.stdout


def test_a_gin_model_file_that_does_not_fit_the_folder_stops_naming_the_field(tmp_path):
    folder = _tiny_umt5_folder(tmp_path / "umt5")
    done = _train("gin_configs/models/t5_1_1_tiny.gin", folder, tmp_path / "run")
    assert done.returncode == 2
    message = done.stderr[done.stderr.rindex("\nerror: ") :]  # gin adds its call context after
    assert message.startswith("\nerror: The model's T5Config.emb_dim is 32 but")
    assert f"INITIAL_CHECKPOINT_PATH {folder} (config.json) has emb_dim=16" in message
