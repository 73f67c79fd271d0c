"""ATTEMPT (`prompts.AttemptPrompt`): the paper's equations by hand, what trains, source loading."""

import math
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
from prompt_tuning.prompts.files import PromptFileError
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network
from prompt_tuning.train import optimizers, prompt_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
P, H, K, R = 3, 6, 2, 2
TOKENS = np.array([[5, 9, 2, 1], [7, 1, 0, 0]], np.int32)  # example 1 has two padding positions


def _reference(params, sources, tokens, embedded, task_ids=None, temperature=None):
    """ATTEMPT section 3.2 in numpy, one example at a time, written from the equations."""
    att = params["attention"]
    out = []
    for b in range(tokens.shape[0]):
        real = embedded[b][tokens[b] > 0]  # [T_b, H]
        x = real.max(axis=0)  # max-pool of the input
        z = x @ att["down"]
        h = (z / (1.0 + np.exp(-z))) @ att["up"]  # W_up SiLU(W_down x)
        h = (h - h.mean()) / np.sqrt(h.var() + 1e-5) * att["scale"] + att["bias"]
        target = params["prompt"] if task_ids is None else params["prompt"][task_ids[b]]
        candidates = [*sources, target]  # [sources; target]
        logits = np.array([c.max(axis=0) @ h for c in candidates]) / (temperature or H * math.e)
        a = np.exp(logits - logits.max())
        a /= a.sum()
        out.append(target + sum(w * c for w, c in zip(a, candidates, strict=True)))
    return np.stack(out)


def _random_params(rng, prompt_shape):
    return {
        "prompt": rng.normal(size=prompt_shape),
        "attention": {
            "down": rng.normal(size=(H, R)),
            "up": rng.normal(size=(R, H)),
            "scale": rng.normal(size=(H,)),
            "bias": rng.normal(size=(H,)),
        },
    }


@pytest.mark.parametrize("temperature", [None, 0.7])
def test_matches_the_papers_equations(temperature):
    rng = np.random.default_rng(0)
    sources = rng.normal(size=(K, P, H)).astype(np.float32)
    embedded = rng.normal(size=(2, 4, H)).astype(np.float32)
    embedded[1, 2:] = 50.0  # padding must not win the max-pool
    params = _random_params(rng, (P, H))
    module = prompts.AttemptPrompt(P, lambda: sources, rank=R, temperature=temperature)
    got = module.apply({"params": params}, jnp.asarray(TOKENS), jnp.asarray(embedded))
    want = _reference(params, sources, TOKENS, embedded, temperature=temperature)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_multi_task_shares_the_attention_and_picks_the_target_by_task_id():
    rng = np.random.default_rng(1)
    sources = rng.normal(size=(K, P, H)).astype(np.float32)
    embedded = rng.normal(size=(2, 4, H)).astype(np.float32)
    params = _random_params(rng, (3, P, H))
    module = prompts.AttemptPrompt(P, lambda: sources, rank=R, num_tasks=3, temperature=0.5)
    ids = np.array([2, 0], np.int32)
    got = module.apply({"params": params}, jnp.asarray(TOKENS), jnp.asarray(embedded), ids)
    want = _reference(params, sources, TOKENS, embedded, ids, temperature=0.5)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)
    # A multi-task prompt is initialized with task ids, as `PromptModel.init_boxed` does.
    variables = module.init(jax.random.key(0), TOKENS, embedded, ids)
    shapes = jax.tree.map(np.shape, nn.unbox(variables))
    assert shapes["params"]["prompt"] == (3, P, H)
    assert shapes["params"]["attention"]["down"] == (H, R)  # one network for all tasks


def test_target_starts_as_the_first_source_unless_an_initializer_is_given():
    sources = np.arange(K * P * H, dtype=np.float32).reshape(K, P, H)
    embedded = np.zeros((2, 4, H), np.float32)
    module = prompts.AttemptPrompt(P, lambda: sources, rank=R, num_tasks=2)
    ids = np.array([1, 0], np.int32)
    params = nn.unbox(module.init(jax.random.key(0), TOKENS, embedded, ids))["params"]
    np.testing.assert_array_equal(params["prompt"], np.stack([sources[0], sources[0]]))
    # torch.nn.Linear's default: uniform in +-1/sqrt(fan_in); the layer norm starts at (1, 0).
    assert np.abs(params["attention"]["down"]).max() <= 1 / math.sqrt(H)
    assert np.abs(params["attention"]["up"]).max() <= 1 / math.sqrt(R)
    np.testing.assert_array_equal(params["attention"]["scale"], 1.0)
    uniform = prompts.AttemptPrompt(P, lambda: sources, rank=R, prompt_init=nn.initializers.zeros)
    params = nn.unbox(uniform.init(jax.random.key(0), TOKENS, embedded))["params"]
    np.testing.assert_array_equal(params["prompt"], 0.0)


def test_sources_of_the_wrong_shape_name_the_macros():
    module = prompts.AttemptPrompt(P + 1, lambda: np.zeros((K, P, H)), rank=R)
    with pytest.raises(ValueError, match="PROMPT_LENGTH"):
        module.init(jax.random.key(0), TOKENS, np.zeros((2, 4, H), np.float32))


def test_only_the_target_prompt_and_attention_train():
    """The sources are not parameters: no gradient, no optimizer state, nothing frozen added."""
    config = t5_config.tiny(num_decoder_layers=1)
    sources = np.random.default_rng(2).normal(size=(K, 4, config.emb_dim)).astype(np.float32)
    module = prompts.AttemptPrompt(4, lambda: sources, rank=R)
    inputs = jnp.array([[12, 7, 44, 9, 1], [30, 5, 1, 0, 0]], jnp.int32)
    model = network.EncoderDecoder(config, prompt=module)
    params = nn.unbox(model.init(jax.random.key(0), inputs, inputs, inputs))["params"]
    trainable, frozen = optimizers.split_params(params, "prompt")  # the run files' regex
    names = lambda tree: {
        optimizers.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)
    }
    assert names(trainable) == {
        "encoder/prompt/prompt", "encoder/prompt/attention/down", "encoder/prompt/attention/up",
        "encoder/prompt/attention/scale", "encoder/prompt/attention/bias",
    }  # fmt: skip
    plain = network.EncoderDecoder(config)
    assert names(frozen) == names(
        nn.unbox(plain.init(jax.random.key(0), inputs, inputs, inputs))["params"]
    )
    for leaf in jax.tree.leaves(params):
        assert leaf.shape[-2:] != sources.shape[-2:] or not np.allclose(leaf, sources[1])

    def loss(train):
        merged = optimizers.merge_params(train, frozen)
        logits = model.apply({"params": merged}, inputs, inputs, inputs)
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    grads = jax.grad(loss)(trainable)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    state = optimizers.adafactor().init(trainable)
    # Every per-parameter slot of the optimizer state belongs to a trainable parameter.
    slots = {
        "/".join(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        for path, _ in jax.tree_util.tree_leaves_with_path(state)
    } - {""}
    assert slots == names(trainable)
    updates, _ = optimizers.adafactor().update(grads, state, trainable)
    trained = optax.apply_updates(trainable, updates)
    assert not np.allclose(trained["encoder"]["prompt"]["prompt"], sources[0])
    np.testing.assert_array_equal(module.sources(), sources)  # untouched


def test_read_source_prompts_accepts_files_run_folders_and_checks_shapes(tmp_path):
    first = np.full((P, H), 1.0, np.float32)
    np.save(tmp_path / "a.npy", first)
    run = tmp_path / "run"
    (run / "prompts").mkdir(parents=True)
    np.save(run / "prompts" / "step_10.npy", np.full((P, H), 2.0, np.float32))
    np.save(run / "prompts" / "best.npy", np.full((P, H), 3.0, np.float32))
    stacked = prompt_files.read_source_prompts([tmp_path / "a.npy", str(run)])
    np.testing.assert_array_equal(stacked, np.stack([first, np.full((P, H), 3.0)]))
    np.save(tmp_path / "long.npy", np.zeros((P + 1, H), np.float32))
    with pytest.raises(PromptFileError, match="same"):
        prompt_files.read_source_prompts([tmp_path / "a.npy", tmp_path / "long.npy"])
    np.savez(tmp_path / "idpg.npz", prompt=first)
    with pytest.raises(PromptFileError, match=r"plain prompts \[P, H\]"):
        prompt_files.read_source_prompts([tmp_path / "idpg.npz"])
    with pytest.raises(PromptFileError, match="SOURCE_PROMPTS is empty"):
        prompt_files.read_source_prompts([])


def test_pt_train_runs_attempt_and_exports_only_what_trains(tmp_path):
    """A short real run of the CLI with gin_configs/prompts/attempt.gin on the tiny T5."""
    rng = np.random.default_rng(3)
    sources = []
    for name in ("topic", "keyword"):
        sources.append(str(tmp_path / f"{name}.npy"))
        np.save(sources[-1], rng.uniform(-0.5, 0.5, size=(5, 32)).astype(np.float32))
    model_dir = tmp_path / "attempt"
    command = [
        sys.executable, "-m", "prompt_tuning.train",
        "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
        "--gin_file=gin_configs/prompts/attempt.gin",
        "--gin_file=gin_configs/runs/prompt_finetune.gin",
        "--gin.MIXTURE_OR_TASK_NAME='builtin_sentiment'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
        f"--gin.MODEL_DIR='{model_dir}'", f"--gin.SOURCE_PROMPTS={sources}",
        "--gin.PROMPT_LENGTH=5", "--gin.ATTEMPT_RANK=4", "--gin.BATCH_SIZE=4",
        "--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=2", "--gin.SAVE_PERIOD=2", "--gin.EVAL_STEPS=1",
    ]  # fmt: skip
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{5 * 32 + 2 * 32 * 4 + 2 * 32:,} trainable" in done.stdout
    assert "step 2/2 | loss" in done.stdout
    export = np.load(model_dir / "prompts" / "step_2.npz")
    assert sorted(export) == [
        "attention/bias", "attention/down", "attention/scale", "attention/up", "prompt",
    ]  # fmt: skip
    # Export and serving refuse the run by name (no plain [P, H] prompt).
    from prompt_tuning.export import exporter  # noqa: PLC0415

    with pytest.raises(PromptFileError, match="AttemptPrompt is instance-dependent \\(ATTEMPT"):
        exporter.export_peft(model_dir, "t5-small", tmp_path / "peft")
