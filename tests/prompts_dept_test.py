"""DePT (Shi & Lipani, ICLR 2024): `prompts.DecomposedInputPrompt`, the encoder's `updates_inputs`
hook, the low-rank pair's own learning rate, counts at the paper's dimensions, export refusal and a
short `python -m prompt_tuning.train` run of gin_configs/prompts/dept.gin.

References: numpy for the formula (prompt prepended; alpha/sqrt(r) * A[:T] B added to the input
positions only), the paper's code (ZhengxiangShi/DePT: A ~ kaiming_uniform(a=sqrt(5)) on [s, r],
B = 0, lora_alpha = 8; m = 60, r = 30, s = 256 on GLUE and m = 60, r = 24, s = 512 on MRQA), a
hand-computed first Adafactor / AdamW step (sign of the gradient times the group's rate).
"""

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import prompts
from prompt_tuning.export import exporter
from prompt_tuning.prompts import dept
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network
from prompt_tuning.train import optimizers, prompt_files
from prompt_tuning.train.model import PromptModel

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = t5_config.tiny(num_decoder_layers=1)  # H = 32
H = CONFIG.emb_dim
INPUTS = jnp.array([[12, 7, 44, 9, 1], [30, 5, 1, 0, 0]], jnp.int32)  # T = 5, row 1 padded


def _random_params(module, rng=0):
    """Initialized parameters with a non-zero B (the paper's B = 0 would hide the update)."""
    variables = module.init(jax.random.key(rng), INPUTS, jnp.zeros((2, 5, H)))
    params = jax.tree.map(np.asarray, nn.unbox(variables)["params"])
    params["low_rank_b"] = np.random.default_rng(rng).normal(size=params["low_rank_b"].shape)
    return jax.tree.map(lambda x: np.array(x, np.float32), params)


def test_prompt_and_input_update_match_numpy():
    module = prompts.DecomposedInputPrompt(length=3, rank=2, max_length=8, alpha=8.0)
    params = _random_params(module)
    embedded = np.random.default_rng(1).normal(size=(2, 5, H)).astype(np.float32)
    prompt, updated = module.apply({"params": params}, INPUTS, jnp.asarray(embedded))
    update = 8.0 / np.sqrt(2) * params["low_rank_a"][:5] @ params["low_rank_b"]  # [T, H]
    want = embedded + np.where(np.asarray(INPUTS)[..., None] > 0, update[None], 0.0)
    np.testing.assert_allclose(updated, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(updated[1, 3:], embedded[1, 3:])  # padding untouched
    np.testing.assert_array_equal(prompt, np.broadcast_to(params["prompt"], (2, 3, H)))


def test_initialisation_follows_the_papers_code():
    module = prompts.DecomposedInputPrompt(length=60, rank=30, max_length=256)
    params = nn.unbox(module.init(jax.random.key(0), INPUTS, jnp.zeros((2, 5, 768))))["params"]
    a, b, prompt = (np.asarray(params[k]) for k in ("low_rank_a", "low_rank_b", "prompt"))
    bound = 1 / np.sqrt(30)  # kaiming_uniform_(a=sqrt(5)): sqrt(6 / ((1 + 5) * fan_in r))
    assert a.shape == (256, 30) and np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert b.shape == (30, 768) and not b.any()
    assert prompt.shape == (60, 768) and abs(prompt.std() - 1.0) < 0.02  # PEFT RANDOM: N(0, 1)


def test_encoder_prepends_the_prompt_to_the_updated_inputs():
    module = prompts.DecomposedInputPrompt(length=3, rank=2, max_length=8)
    params = _random_params(module)
    model = network.EncoderDecoder(CONFIG, prompt=module)
    variables = model.init(jax.random.key(0), INPUTS, None, method=model.encode)
    full = jax.tree.map(np.asarray, nn.unbox(variables)["params"])
    full["encoder"]["prompt"] = params
    encoded, mask = model.apply({"params": full}, INPUTS, None, method=model.encode)
    np.testing.assert_array_equal(mask, np.concatenate([np.ones((2, 3), bool), INPUTS > 0], 1))
    # Reference: a plain Prompt whose inputs are the numpy-updated embeddings, fed as tokens of
    # an extended vocabulary (one new row per (example, position)), so only the inputs differ.
    table = full["token_embedder"]["embedding"]
    update = 8.0 / np.sqrt(2) * params["low_rank_a"][:5] @ params["low_rank_b"]
    tokens = np.asarray(INPUTS)
    rows = table[tokens] + np.where(tokens[..., None] > 0, update[None], 0.0)  # [B, T, H]
    ids = np.where(tokens > 0, CONFIG.vocab_size + np.arange(10).reshape(2, 5), 0)
    big = np.concatenate([table, rows.reshape(10, H)]).astype(np.float32)
    plain_config = t5_config.tiny(num_decoder_layers=1, vocab_size=CONFIG.vocab_size + 10)
    plain = network.EncoderDecoder(plain_config, prompt=prompts.Prompt(3))
    plain_params = jax.tree.map(lambda x: x, full)
    plain_params["token_embedder"] = {"embedding": big}
    plain_params["encoder"]["prompt"] = {"prompt": params["prompt"]}
    want, _ = plain.apply({"params": plain_params}, jnp.asarray(ids), None, method=plain.encode)
    real = np.concatenate([np.ones((2, 3), bool), tokens > 0], 1)
    np.testing.assert_allclose(np.asarray(encoded)[real], np.asarray(want)[real], atol=1e-5)


def test_inputs_shorter_than_s_use_the_first_rows_and_longer_ones_are_refused():
    module = prompts.DecomposedInputPrompt(length=2, rank=2, max_length=6)
    params = _random_params(module)
    embedded = jnp.zeros((2, 5, H))
    _, before = module.apply({"params": params}, INPUTS, embedded)
    params["low_rank_a"][5:] += 100.0  # row 5 is beyond T = 5: unused
    _, after = module.apply({"params": params}, INPUTS, embedded)
    np.testing.assert_array_equal(before, after)
    short = prompts.DecomposedInputPrompt(length=2, rank=2, max_length=4)
    with pytest.raises(ValueError, match=r"s=4 .*T=5.*TASK_FEATURE_LENGTHS\['inputs'\]"):
        short.init(jax.random.key(0), INPUTS, embedded)
    with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
        dept.input_length({"targets": 4})


@pytest.mark.parametrize(
    ("m", "r", "s"),
    [(60, 30, 256), (60, 24, 512)],  # the paper's code: GLUE/SuperGLUE and MRQA settings
)
def test_count_at_t5_base_equals_a_100_token_prompt(m, r, s):
    module = prompts.DecomposedInputPrompt(length=m, rank=r, max_length=s)
    shapes = jax.eval_shape(module.init, jax.random.key(0), INPUTS, jnp.zeros((2, 5, 768)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)["params"]))
    assert count == dept.parameter_count(m, r, s, 768) == m * 768 + s * r + r * 768 == 76_800
    assert count == 100 * 768


def test_existing_modules_ignore_the_new_hook():
    for module in (prompts.Prompt(3), prompts.DecomposedPrompt(3), prompts.DeepPrompt(2)):
        assert not getattr(module, "updates_inputs", False)


def _model_and_grads():
    module = prompts.DecomposedInputPrompt(length=3, rank=2, max_length=8)
    model = PromptModel(network.EncoderDecoder(CONFIG, prompt=module))
    params = jax.tree.map(np.asarray, nn.unbox(model.init_boxed(jax.random.key(0), 5, 3)))
    params["encoder"]["prompt"]["low_rank_b"] = np.random.default_rng(0).normal(size=(2, H))
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    trainable, frozen = optimizers.split_params(params)
    batch = {
        "encoder_input_tokens": INPUTS,
        "decoder_input_tokens": jnp.array([[0, 5, 6], [0, 7, 0]], jnp.int32),
        "decoder_target_tokens": jnp.array([[5, 6, 1], [7, 1, 0]], jnp.int32),
        "decoder_loss_weights": jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32),
    }
    loss = lambda tr: model.loss_fn(optimizers.merge_params(tr, frozen), batch, None)[0]
    return trainable, frozen, jax.grad(loss)(trainable)


def test_only_the_three_dept_parameters_train():
    trainable, frozen, grads = _model_and_grads()
    assert set(trainable) == {"encoder"} and set(trainable["encoder"]) == {"prompt"}
    assert set(trainable["encoder"]["prompt"]) == {"prompt", "low_rank_a", "low_rank_b"}
    assert "prompt" not in frozen["encoder"]  # the frozen T5 gets no gradient or state
    assert all(np.any(g != 0) for g in jax.tree.leaves(grads))


def test_low_rank_pair_trains_at_its_own_rate_with_adafactor():
    trainable, _, grads = _model_and_grads()
    scale = 5e-3 / 0.3
    optimizer = optimizers.adafactor(
        0.3, weight_decay_rate=None, learning_rate_scales={dept.LOW_RANK_REGEX: scale}
    )
    updates, _ = optimizer.update(grads, optimizer.init(trainable), trainable)
    # First Adafactor step (decay 1 - 1^-0.8 = 0, unfactored): u = g / sqrt(g^2 + 1e-30) =
    # sign(g), RMS 1 so unclipped; the update is -rate * sign(g).
    got, g = updates["encoder"]["prompt"], grads["encoder"]["prompt"]
    np.testing.assert_allclose(got["prompt"], -0.3 * np.sign(g["prompt"]), rtol=1e-6)
    for name in ("low_rank_a", "low_rank_b"):
        np.testing.assert_allclose(got[name], -0.3 * scale * np.sign(g[name]), rtol=1e-6)


def test_low_rank_pair_trains_at_its_own_rate_with_adamw():
    trainable, _, grads = _model_and_grads()
    optimizer = optimizers.adamw(
        0.3, weight_decay=0.0, global_norm_clip=None, eps=1e-12,
        learning_rate_scales={"low_rank_b": 0.1},
    )  # fmt: skip
    updates, _ = optimizer.update(grads, optimizer.init(trainable), trainable)
    got, g = updates["encoder"]["prompt"], grads["encoder"]["prompt"]
    # First Adam step: m / sqrt(v) with bias correction = g / |g| = sign(g).
    np.testing.assert_allclose(got["prompt"], -0.3 * np.sign(g["prompt"]), rtol=1e-4)
    np.testing.assert_allclose(got["low_rank_a"], -0.3 * np.sign(g["low_rank_a"]), rtol=1e-4)
    np.testing.assert_allclose(got["low_rank_b"], -0.03 * np.sign(g["low_rank_b"]), rtol=1e-4)


def test_a_scale_regex_that_matches_nothing_is_an_error():
    trainable, _, _ = _model_and_grads()
    optimizer = optimizers.adafactor(learning_rate_scales={"lora_embedding": 0.1})
    with pytest.raises(ValueError, match="'lora_embedding' matches no trainable parameter"):
        optimizer.init(trainable)
    plain = optimizers.adamw()  # without scales the state keeps its structure (checkpoints)
    assert jax.tree.structure(plain.init(trainable)) == jax.tree.structure(
        optax.chain(
            optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.add_decayed_weights(0),
            optimizers.scale_by_logged_schedule(lambda s: 0.1), optax.scale(-1.0),
        ).init(trainable)
    )  # fmt: skip


def test_short_pt_train_run_exports_parameters_and_pt_export_refuses(tmp_path):
    model_dir = tmp_path / "dept"
    command = [
        sys.executable, "-m", "prompt_tuning.train",
        "--gin_file=gin_configs/models/t5_1_1_tiny_pretrained.gin",
        "--gin_file=gin_configs/prompts/dept.gin",
        "--gin_file=gin_configs/runs/prompt_finetune.gin",
        "--gin.MIXTURE_OR_TASK_NAME='builtin_sentiment'", f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
        "--gin.PROMPT_LENGTH=6", "--gin.DEPT_RANK=4", "--gin.BATCH_SIZE=8",
        "--gin.TRAIN_STEPS=2502", "--gin.EVAL_PERIOD=2", "--gin.SAVE_PERIOD=2",
        "--gin.EVAL_STEPS=1", "--gin.DROPOUT_RATE=0.0",
    ]  # fmt: skip
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    count = dept.parameter_count(6, 4, 32, 128)  # 6*128 + 32*4 + 4*128 = 1,408
    assert f"{count:,} trainable" in done.stdout + done.stderr
    records = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" for r in records)
    with np.load(model_dir / "prompts" / "best.npz") as saved:
        assert {k: saved[k].shape for k in saved.files} == {
            "prompt": (6, 128), "low_rank_a": (32, 4), "low_rank_b": (4, 128),
        }  # fmt: skip
        assert np.any(saved["low_rank_b"] != 0)  # the pair trained
    config = (model_dir / "config.gin").read_text()
    assert "learning_rate_scales" in config and "prompt/low_rank_" in config
    assert "DecomposedInputPrompt" in prompt_files.NOT_FOLDABLE
    with pytest.raises(exporter.ExportError, match="DecomposedInputPrompt is decomposed"):
        exporter.export_peft(model_dir, "t5-small", tmp_path / "adapter")
