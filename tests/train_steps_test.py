"""TRAIN_STEPS counts as in T5X: from the initial checkpoint's step, with T5X's step counters.

References: T5X's `runs/finetune.gin` ("TRAIN_STEPS includes pretrain steps"), its checkpoint
layouts (`optimizer/state/step`, orbax `state/step`), and its Adafactor's decay
`1 - (step - step_offset + 1)^-0.8` written out by hand (and `t5x.adafactor` itself when T5X is
importable).
"""

import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prompt_tuning import prompts
from prompt_tuning.t5 import checkpoints as t5_checkpoints
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network
from prompt_tuning.train import checkpoints, optimizers, steps, trainer
from prompt_tuning.train.model import PromptModel

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"
TINY = pathlib.Path(__file__).resolve().parents[1] / "prompt_tuning" / "pretrained" / "t5_tiny"
PRETRAINED_STEP = 1_100_000


def _module() -> network.EncoderDecoder:
    config = t5_config.tiny(vocab_size=512, dropout_rate=0.0)
    return network.EncoderDecoder(config, prompt=prompts.Prompt(length=4))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A legacy T5X checkpoint of a random tiny T5 written at step 1,100,000."""
    boxed = PromptModel(_module()).init_boxed(jax.random.key(3), 8, 4)
    _, frozen = optimizers.split_params(nn.unbox(boxed))
    path = tmp_path_factory.mktemp("pretrained") / f"checkpoint_{PRETRAINED_STEP}"
    t5_checkpoints.save_t5x_checkpoint(jax.device_get(frozen), path, step=PRETRAINED_STEP)
    return str(path)


def test_initial_step_of_every_checkpoint_kind(pretrained, tmp_path):
    assert steps.initial_step(pretrained) == PRETRAINED_STEP
    assert steps.initial_step(str(TINY / "checkpoint_2500")) == 2500
    assert steps.initial_step(None) == 0
    if (FIXTURE / "t5x_t5_1_1_tiny").exists():  # written by T5X itself
        assert steps.initial_step(str(FIXTURE / "t5x_t5_1_1_tiny" / "checkpoint_3")) == 3
    _, params = t5_checkpoints.load_checkpoint(pretrained)
    state = {"step": np.int32(1_000_000), "param_states": {}}
    ocp.PyTreeCheckpointer().save(tmp_path / "orbax" / "state", {"target": params, "state": state})
    assert steps.initial_step(str(tmp_path / "orbax")) == 1_000_000
    t5_checkpoints.save_hf_checkpoint(params, t5_config.tiny(vocab_size=512), tmp_path / "hf")
    assert steps.initial_step(str(tmp_path / "hf")) == 0


def test_train_steps_not_beyond_the_checkpoint_is_an_error_that_says_so(pretrained, tmp_path):
    model_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"TRAIN_STEPS = 30000 is not above .*1,100,000.*1130000"):
        _train(model_dir, 30_000, pretrained)
    with pytest.raises(ValueError, match="TRAIN_STEPS = 1100000 is not above"):
        _train(model_dir, PRETRAINED_STEP, pretrained)
    assert not model_dir.exists()  # nothing was written


def _train(model_dir, train_steps, checkpoint, **overrides) -> trainer.TrainResult:
    kwargs = dict(
        model=_module(),
        model_dir=str(model_dir),
        mixture_or_task_name="builtin_keyword",
        mixture_or_task_module="tasks.builtin",
        task_feature_lengths={"inputs": 32, "targets": 4},
        train_steps=train_steps,
        batch_size=4,
        initial_checkpoint_path=checkpoint,
        log_period=1,
        save_period=2,
        keep=3,
        num_devices=1,
    )
    return trainer.train(**(kwargs | overrides))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, pretrained):
    """1,100,000 -> 1,100,004 in one go."""
    model_dir = tmp_path_factory.mktemp("straight")
    return model_dir, _train(model_dir, PRETRAINED_STEP + 4, pretrained)


def test_trains_from_the_checkpoints_step_to_train_steps(straight):
    model_dir, result = straight
    assert result.step == PRETRAINED_STEP + 4
    assert [m["step"] for m in result.train_metrics] == list(range(1_100_001, 1_100_005))
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["1100002", "1100004"]
    assert (model_dir / "prompts" / "step_1100004.npy").exists()
    # T5X's step counters count on from the checkpoint's step (LR schedule, Adafactor decay).
    manager = ocp.CheckpointManager(model_dir / "checkpoints", item_names=("state", "meta"))
    restored = manager.restore(
        PRETRAINED_STEP + 4,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
    )
    manager.close()
    counts = [
        int(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored.state["opt_state"])[0]
        if "count" in jax.tree_util.keystr(path)
    ]
    assert counts == [PRETRAINED_STEP + 4] * 2  # Adafactor's and the schedule's
    assert int(restored.state["step"]) == PRETRAINED_STEP + 4
    assert restored.meta["data_position"] == 4  # batches consumed, not the step


def test_resume_from_a_pretrained_step_equals_the_uninterrupted_run(straight, pretrained, tmp_path):
    _, uninterrupted = straight
    first = _train(tmp_path, PRETRAINED_STEP + 2, pretrained)
    assert first.step == PRETRAINED_STEP + 2
    resumed = _train(tmp_path, PRETRAINED_STEP + 4, pretrained)
    np.testing.assert_allclose(
        [m["loss"] for m in resumed.train_metrics],
        [m["loss"] for m in uninterrupted.train_metrics[2:]],
        rtol=1e-6,
    )
    prompt = lambda r: np.asarray(r.trainable["encoder"]["prompt"]["prompt"])  # noqa: E731
    np.testing.assert_allclose(prompt(resumed), prompt(uninterrupted), atol=1e-6)
    step, saved = checkpoints.load_trained_params(tmp_path)
    assert step == PRETRAINED_STEP + 4


def _t5x_adafactor_by_hand(param, grads, step, step_offset, lr=0.3, wd=1e-5):
    """T5X's unfactored Adafactor (decay 0.8, clipping 1, eps 1e-30), written out, float64."""
    v = np.zeros_like(param, np.float64)
    p = param.astype(np.float64)
    for i, g in enumerate(grads):
        decay = 1.0 - (step + i - step_offset + 1.0) ** -0.8
        v = decay * v + (1.0 - decay) * (g.astype(np.float64) ** 2 + 1e-30)
        u = g / np.sqrt(v)
        u /= max(1.0, np.sqrt(np.mean(u**2)))
        p = p - lr * u - wd * p
    return p


@pytest.mark.parametrize("step_offset", [0, PRETRAINED_STEP])
def test_adafactor_counts_from_the_initial_step_as_t5x(step_offset):
    rng = np.random.default_rng(0)
    param = rng.normal(size=(5, 8)).astype(np.float32)  # [P, H], unfactored (dims < 128)
    grads = [rng.normal(size=param.shape).astype(np.float32) for _ in range(3)]
    optimizer = optimizers.adafactor(learning_rate=0.3, step_offset=step_offset)
    state = optimizers.start_at_step(optimizer.init(param), PRETRAINED_STEP)
    p = jnp.asarray(param)
    for g in grads:
        updates, state = optimizer.update(jnp.asarray(g), state, p)
        p = p + updates
    expected = _t5x_adafactor_by_hand(param, grads, PRETRAINED_STEP, step_offset)
    np.testing.assert_allclose(np.asarray(p), expected, rtol=2e-5, atol=1e-6)
    # From step 1,100,000 with step_offset 0 (Lester et al.'s runs) the second moment barely
    # decays, unlike counting from 0: the two differ after the first step.
    from_zero = _t5x_adafactor_by_hand(param, grads, 0, 0)
    assert (step_offset == PRETRAINED_STEP) == np.allclose(expected, from_zero, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("t5x") is None, reason="T5X is not installed")
def test_adafactor_equals_t5x_adafactor_at_a_pretrained_step():
    from t5x import adafactor as t5x_adafactor  # noqa: PLC0415

    rng = np.random.default_rng(1)
    params = {"prompt": rng.normal(size=(5, 8)).astype(np.float32)}
    grads = [{"prompt": rng.normal(size=(5, 8)).astype(np.float32)} for _ in range(3)]
    t5x_opt = t5x_adafactor.Adafactor(
        learning_rate=0.3, decay_rate=0.8, step_offset=0, multiply_by_parameter_scale=False,
        weight_decay_rate=1e-5, clipping_threshold=1.0,
    )  # fmt: skip
    t5x_state = t5x_opt.init_state(params).replace(step=jnp.asarray(PRETRAINED_STEP, jnp.int32))
    ours = optimizers.adafactor(learning_rate=0.3)
    state = optimizers.start_at_step(ours.init(params), PRETRAINED_STEP)
    theirs, p = params, jax.tree.map(jnp.asarray, params)
    for g in grads:
        theirs, t5x_state = t5x_opt.apply_gradient(t5x_opt.hyper_params, theirs, t5x_state, g)
        updates, state = ours.update(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, updates)
    np.testing.assert_allclose(np.asarray(p["prompt"]), np.asarray(theirs["prompt"]), atol=1e-6)
