"""MPT (Wang et al., ICLR 2023): the prompt module, counts, distillation loss and both stages."""

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

from prompt_tuning.prompts import mpt
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network
from prompt_tuning.train import distillation, losses, optimizers, prompt_files, step
from prompt_tuning.train.model import PromptModel

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = t5_config.tiny(num_decoder_layers=1)  # H = 32
H = CONFIG.emb_dim


def _variables(num_tasks, length=3, h=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "shared": rng.normal(size=(length, h)).astype(np.float32),
            "u": rng.normal(size=(num_tasks, length)).astype(np.float32),
            "v": rng.normal(size=(num_tasks, h)).astype(np.float32),
        }
    }


def test_prompt_is_shared_times_rank_one_task_matrix():
    variables = _variables(num_tasks=3)
    p = variables["params"]
    module = mpt.MultitaskPrompt(length=3, num_tasks=3)
    task_ids = jnp.array([2, 0, 2, 1])
    out = module.apply(variables, jnp.ones((4, 5), int), jnp.zeros((4, 5, 4)), task_ids)
    for b, k in enumerate([2, 0, 2, 1]):
        expected = p["shared"] * np.outer(p["u"][k], p["v"][k])  # P* ∘ (u_k v_kᵀ)
        np.testing.assert_allclose(out[b], expected, rtol=1e-6)
    # fold gives the same P_k, [N, P, H], and [P, H] for one task.
    folded = module.fold(variables)
    assert folded.shape == (3, 3, 4)
    np.testing.assert_allclose(folded[1], p["shared"] * np.outer(p["u"][1], p["v"][1]), rtol=1e-6)
    single = _variables(num_tasks=1)
    assert mpt.MultitaskPrompt(length=3).fold(single).shape == (3, 4)


def test_default_init_starts_every_task_at_the_shared_prompt():
    module = mpt.MultitaskPrompt(length=3, num_tasks=2)
    out, variables = module.init_with_output(
        jax.random.key(0), jnp.ones((2, 5), int), jnp.zeros((2, 5, 4)), jnp.array([0, 1])
    )
    params = nn.unbox(variables["params"])
    np.testing.assert_array_equal(params["u"], 1.0)
    np.testing.assert_array_equal(params["v"], 1.0)
    np.testing.assert_array_equal(out[1], params["shared"])
    assert float(jnp.abs(params["shared"]).max()) <= 0.5


def test_missing_task_ids_with_several_tasks_names_the_fix():
    module = mpt.MultitaskPrompt(length=3, num_tasks=2)
    with pytest.raises(ValueError, match="NUM_TASKS = 1"):
        module.init(jax.random.key(0), jnp.ones((2, 5), int), jnp.zeros((2, 5, 4)), None)


def test_counts_at_the_papers_dimensions():
    # Wang et al. (2023), Table 1: MPT tunes 77.6K parameters per target task on T5-Base
    # (H = 768) with P = 100: P*H + P + H = 76,800 + 100 + 768 = 77,668.
    shapes = jax.eval_shape(
        mpt.MultitaskPrompt(length=100).init,
        jax.random.key(0), jnp.ones((1, 4), int), jnp.zeros((1, 4, 768)),
    )  # fmt: skip
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes)))
    assert count == mpt.num_parameters(100, 768) == 100 * 768 + 100 + 768 == 77_668
    assert round(count / 1000, 1) in (77.6, 77.7)  # the paper prints 77.6K
    # Source stage: one P* and a pair per source task (6 sources in the paper).
    assert mpt.num_parameters(100, 768, num_tasks=6) == 76_800 + 6 * 868


def test_export_writes_each_tasks_plain_prompt(tmp_path):
    variables = _variables(num_tasks=2)
    module = mpt.MultitaskPrompt(length=3, num_tasks=2)
    export = prompt_files.export_form(module, {"encoder": {"prompt": variables["params"]}})
    assert export.kind == prompt_files.MULTI_TASK and export.value.shape == (2, 3, 4)
    path = prompt_files.write_export(tmp_path, "step_1", export)
    p = variables["params"]
    expected = p["shared"] * np.outer(p["u"][0], p["v"][0])
    np.testing.assert_allclose(np.load(path)[0], expected, rtol=1e-6)


def test_distillation_terms_match_a_hand_computation():
    student = jnp.array([[[0.0, 1.0], [2.0, 0.0]]])  # [B=1, S=2, V=2]
    teacher = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
    weights = jnp.array([[1.0, 0.0]])  # only the first token counts
    s_hidden = jnp.array([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # [B=1, L=3, H=2]
    t_hidden = jnp.array([[[0.0, 2.0], [3.0, 2.0], [0.0, 0.0]]])
    mask = jnp.array([[True, True, False]])  # the last position is padding
    kl, mse = losses.distillation_terms(
        student, teacher, s_hidden, t_hidden, weights, mask, temperature=2.0
    )
    # τ = 2: teacher p = softmax([0.5, 0]), student q = softmax([0, 0.5]).
    e = math.exp(0.5)
    p = [e / (e + 1), 1 / (e + 1)]
    q = [1 / (e + 1), e / (e + 1)]
    assert float(kl) == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)), 1e-6)
    assert float(mse) == pytest.approx((1.0 + 0.0 + 0.0 + 4.0) / 4, 1e-6)


def _tiny_model(tmp_path, teachers, num_tasks=2):
    files = []
    for i, table in enumerate(teachers):
        files.append(str(tmp_path / f"teacher_{i}.npy"))
        np.save(files[-1], table)
    module = network.EncoderDecoder(
        CONFIG, prompt=mpt.MultitaskPrompt(length=3, num_tasks=num_tasks)
    )
    config = distillation.PromptDistillation(files, temperature=2.0)
    model = PromptModel(module, distillation=config)
    params = nn.unbox(model.init_boxed(jax.random.key(1), 5, 3))
    batch = {
        "encoder_input_tokens": jnp.array([[5, 6, 7, 1, 0], [8, 9, 1, 0, 0]]),
        "decoder_input_tokens": jnp.array([[0, 4, 5], [0, 6, 0]]),
        "decoder_target_tokens": jnp.array([[4, 5, 1], [6, 1, 0]]),
        "decoder_loss_weights": jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
        "task_ids": jnp.array([1, 0]),
    }
    return model, params, batch


def test_teachers_equal_to_the_students_prompts_distill_nothing(tmp_path):
    rng = np.random.default_rng(0)
    shared = rng.uniform(-0.5, 0.5, (3, H)).astype(np.float32)
    model, params, batch = _tiny_model(tmp_path, [shared, shared])
    params["encoder"]["prompt"]["shared"] = shared  # u = v = 1: P_k = P* for both tasks
    loss, aux = model.loss_fn(params, batch, None)
    assert float(aux["distill_kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(aux["distill_mse"]) == pytest.approx(0.0, abs=1e-10)
    plain = PromptModel(model.module).loss_fn(params, batch, None)[0]
    assert float(loss) == pytest.approx(float(plain), rel=1e-6)


def test_distillation_loss_adds_the_weighted_terms(tmp_path):
    rng = np.random.default_rng(1)
    teachers = [rng.normal(size=(4, H)).astype(np.float32) for _ in range(2)]  # P_t = 4 != P
    model, params, batch = _tiny_model(tmp_path, teachers)
    loss, aux = model.loss_fn(params, batch, None)
    ce = PromptModel(model.module).loss_fn(params, batch, None)[0]
    assert float(aux["distill_kl"]) > 0 and float(aux["distill_mse"]) > 0
    expected = float(ce) + 0.9 * float(aux["distill_kl"]) + 0.9 * float(aux["distill_mse"])
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_only_the_mpt_parameters_train(tmp_path):
    rng = np.random.default_rng(2)
    teachers = [rng.normal(size=(3, H)).astype(np.float32) for _ in range(2)]
    model, params, batch = _tiny_model(tmp_path, teachers)
    trainable, frozen = optimizers.split_params(params, "prompt")
    assert set(trainable["encoder"]["prompt"]) == {"shared", "u", "v"}
    assert set(trainable) == {"encoder"} and set(trainable["encoder"]) == {"prompt"}
    optimizer = optax.adam(0.1)
    state = step.init_state(optimizer, trainable)
    state_leaves = jax.tree.leaves(state.opt_state)
    assert sum(x.size for x in state_leaves if x.ndim) == 2 * (3 * H + 2 * (3 + H))
    new, _ = step.train_step(
        state, frozen, batch, jax.random.key(0), model=model, optimizer=optimizer
    )
    for name in ("shared", "u", "v"):
        old = trainable["encoder"]["prompt"][name]
        assert not np.allclose(new.params["encoder"]["prompt"][name], old), name
    np.testing.assert_array_equal(model._teachers[0], teachers[0])  # teachers are constants


def test_teacher_count_must_match_the_tasks(tmp_path):
    with pytest.raises(ValueError, match="one teacher per task id"):
        _tiny_model(tmp_path, [np.zeros((3, H), np.float32)] * 3, num_tasks=2)


_STAGES = """
import sys
import gin
from prompt_tuning.train import gin_utils, trainer
tmp, common = sys.argv[1], [
    "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
    "--gin_file=gin_configs/runs/prompt_finetune.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.TRAIN_STEPS=2",
    "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=0", "--gin.BATCH_SIZE=4", "--gin.PROMPT_LENGTH=5",
    "--gin.DROPOUT_RATE=0.0",
]
teachers = [f"{tmp}/t{i}.npy" for i in range(3)]
gin_utils.main(trainer.train, [
    "--gin_file=gin_configs/prompts/mpt_source.gin", *common,
    "--gin.MIXTURE_OR_TASK_NAME='builtin_equal_with_task_ids'", "--gin.NUM_TASKS=3",
    f"--gin.TEACHER_PROMPTS={teachers}", f"--gin.MODEL_DIR='{tmp}/source'",
])
gin.clear_config()
gin_utils.main(trainer.train, [
    "--gin_file=gin_configs/prompts/mpt.gin", *common,
    "--gin.MIXTURE_OR_TASK_NAME='builtin_sentiment'",
    f"--gin.MPT_SOURCE='{tmp}/source/checkpoints/2'", f"--gin.MODEL_DIR='{tmp}/target'",
])
"""


def test_source_stage_with_distillation_then_target_adaptation_train(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        np.save(tmp_path / f"t{i}.npy", rng.uniform(-0.5, 0.5, (5, H)).astype(np.float32))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run(
        [sys.executable, "-c", _STAGES, str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # Source: P* + 3 pairs; target: P* + one pair (P*H + P + H).
    assert f"{5 * H + 3 * (5 + H):,} trainable" in done.stdout
    assert f"{5 * H + 5 + H:,} trainable" in done.stdout
    source = np.load(tmp_path / "source" / "prompts" / "step_2.npy")
    target = np.load(tmp_path / "target" / "prompts" / "step_2.npy")
    assert source.shape == (3, 5, H) and target.shape == (5, H)
    records = (tmp_path / "source" / "metrics.jsonl").read_text()
    assert '"distill_kl"' in records and '"distill_mse"' in records
