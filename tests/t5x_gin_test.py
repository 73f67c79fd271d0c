"""gin_configs/t5x/: every prompt parameterization under T5X's model and optimizer, and the real
`python -m t5x.train`, `t5x.eval` and `t5x.infer` binaries on the embedded tiny T5.

Needs T5X from source on PYTHONPATH (`make test` puts ../shared/t5x there when it exists; the
README's steps otherwise); skipped without it. References: T5X's own `EncoderDecoderModel.loss_fn`
against our `PromptModel.loss_fn`, T5X's checkpoints (the frozen weights as restored, no optimizer
state for them), T5X's evaluation and inference outputs against the task's generated examples.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from prompt_tuning.t5 import checkpoints as t5_checkpoints
from prompt_tuning.t5 import orbax_format
from prompt_tuning.train import optimizers
from prompt_tuning.train.model import PromptModel
from tasks import builtin

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("t5x") is None, reason="T5X is not installed (see the README)"
)
ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_GIN = "gin_configs/models/t5_1_1_tiny_pretrained.gin"
CHECKPOINT = "prompt_tuning/pretrained/t5_tiny/checkpoint_2500"
PROMPTS = sorted(p.name for p in (ROOT / "gin_configs" / "prompts").glob("*.gin"))
TASK, LENGTHS = "builtin_sentiment", {"inputs": 16, "targets": 4}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory) -> dict[str, Any]:
    """A `.npy` prompt and a checkpoint holding `encoder/prompt/prompt`, [4, 128]; two more
    `.npy` prompts as ATTEMPT's SOURCE_PROMPTS."""
    folder = tmp_path_factory.mktemp("prompt_files")
    prompt = np.random.default_rng(0).normal(size=(4, 128)).astype(np.float32)
    np.save(folder / "prompt.npy", prompt)
    t5_checkpoints.save_t5x_checkpoint(
        {"encoder": {"prompt": {"prompt": prompt}}}, folder / "checkpoint_7"
    )
    sources = []
    for i in range(2):
        sources.append(str(folder / f"source_{i}.npy"))
        np.save(sources[-1], np.random.default_rng(i + 1).uniform(-0.5, 0.5, (4, 128)))
    return {
        "PROMPT_FILE": str(folder / "prompt.npy"),
        "PROMPT_CHECKPOINT_PATH": str(folder / "checkpoint_7"),
        "SOURCE_PROMPTS": sources,
        "MPT_SOURCE": str(folder / "prompt.npy"),  # MPT's shared prompt P*
        # Bound for mpt_source.gin; T5X's loss has no distillation term (pt-train only).
        "TEACHER_PROMPTS": [str(folder / "prompt.npy")],
    }


def _batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.integers(3, 512, (2, LENGTHS["inputs"])).astype(np.int32)
    targets = rng.integers(3, 512, (2, LENGTHS["targets"])).astype(np.int32)
    targets[0, 2:] = 0
    return {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }


def _t5x_model(
    prompt_gin: str, prompt_files: dict[str, Any], extra: tuple[str, ...] = (), **more: str
):
    """MODEL of our model file, `prompt_gin`, gin_configs/t5x/models/prompt.gin and `extra`."""
    bindings = {
        "DROPOUT_RATE": "0.0",
        "PROMPT_LENGTH": "4",
        "NUM_TASKS": "1",  # T5X's batches carry no task ids: multi-task prompts hold one task
        "LABELS": "('negative', 'positive')",
        "INITIAL_CHECKPOINT_PATH": repr(str(ROOT / CHECKPOINT)),
        "TASK_FEATURE_LENGTHS": repr(LENGTHS),  # DePT's input update has s = its inputs rows
        **{k: repr(v) for k, v in prompt_files.items()},
        **more,
    }
    gin.parse_config_files_and_bindings(
        [str(ROOT / f) for f in (MODEL_GIN, f"gin_configs/prompts/{prompt_gin}")]
        + [str(ROOT / "gin_configs/t5x/models/prompt.gin")]
        + [str(ROOT / f) for f in extra],
        [f"{k} = {v}" for k, v in bindings.items()],
    )
    return gin.query_parameter("%MODEL").scoped_configurable_fn()


@pytest.mark.parametrize("prompt_gin", PROMPTS)
def test_every_prompt_trains_only_itself_under_t5x_as_under_our_trainer(prompt_gin, prompt_files):
    model = _t5x_model(prompt_gin, prompt_files)
    _check_two_steps_as_ours(model, optimizers.adafactor())


def test_dept_low_rank_pair_trains_at_its_own_rate_under_t5x(prompt_files):
    """gin_configs/t5x/models/dept.gin: T5X's two Adafactors (the pair's at
    DEPT_LOW_RANK_LR_SCALE) update as our trainer's `learning_rate_scales` does."""
    scale = 0.05  # dept.gin's 1/60 would hardly move the pair in two steps
    model = _t5x_model(
        "dept.gin", prompt_files, ("gin_configs/t5x/models/dept.gin",),
        DEPT_LOW_RANK_LR_SCALE=str(scale),
    )  # fmt: skip
    assert [type(o).__name__ for o in model.optimizer_def.sub_optimizers] == [
        "Adafactor", "ScaledLearningRate",
    ]  # fmt: skip
    ours = optimizers.adafactor(learning_rate_scales={"prompt/low_rank_": scale})
    _check_two_steps_as_ours(model, ours)


def _check_two_steps_as_ours(model, ours_optimizer):
    """Two T5X steps at rate 0.3 equal two of our trainer's; frozen weights get no state."""
    from t5x import partitioning  # noqa: PLC0415
    from t5x import train_state as t5x_train_state  # noqa: PLC0415

    from prompt_tuning.t5x import optim as t5x_optim  # noqa: PLC0415

    batches = [_batch(1), _batch(2)]
    shapes = {k: v.shape for k, v in batches[0].items() if k != "decoder_loss_weights"}
    variables = model.get_initial_variables(
        jax.random.key(0), shapes, dict.fromkeys(shapes, jnp.int32)
    )
    state = t5x_train_state.FlaxOptimTrainState.create(model.optimizer_def, variables)
    rules = partitioning.standard_logical_axis_rules(
        additional_rules=t5x_optim.logical_axis_rules()
    )
    partitioner = partitioning.PjitPartitioner(num_partitions=1, logical_axis_rules=rules)
    partitioner.get_mesh_axes(state)  # every logical axis has a rule
    _, frozen = t5_checkpoints.load_checkpoint(ROOT / CHECKPOINT)
    trainable, _ = optimizers.split_params(dict(state.params))
    state = state.replace_params(optimizers.merge_params(trainable, frozen))
    ours_model = PromptModel(model.module.network, z_loss=1e-4)
    ours_optimizer = optimizers.with_param_axes(ours_optimizer, ours_model.param_logical_axes())
    ours, ours_state = trainable, ours_optimizer.init(trainable)
    for batch in batches:  # two steps, so that the second-moment decay matters
        (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
            state.params, batch, None
        )
        want, _ = ours_model.loss_fn(optimizers.merge_params(ours, frozen), batch, None)
        np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
        state = state.apply_gradient(grads, learning_rate=0.3)
        updates, ours_state = ours_optimizer.update(
            optimizers.split_params(grads)[0], ours_state, ours
        )
        ours = optax.apply_updates(ours, updates)
    new = dict(state.params)
    for name, value in t5_checkpoints.flatten(ours).items():
        got = t5_checkpoints.flatten(new)[name]
        np.testing.assert_allclose(got, value, atol=1e-5, err_msg=name)
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), frozen, optimizers.split_params(new)[1])
    assert not any(jax.tree.leaves(moved))  # frozen weights untouched
    states = t5_checkpoints.flatten(dict(state.param_states))
    with_state = {n for n, s in states.items() if s is not None}
    assert with_state == set(t5_checkpoints.flatten(trainable))


def _run(env: dict, binary: str, runs_gin: str, *flags: str) -> subprocess.CompletedProcess:
    """`python -m t5x.<binary>` with our gin files from the repository root, as in the README."""
    gin_files = [MODEL_GIN, "gin_configs/prompts/prompt_tuning_class_labels.gin"]
    gin_files += ["gin_configs/t5x/models/prompt.gin", f"gin_configs/t5x/runs/{runs_gin}"]
    command = [sys.executable, "-m", f"t5x.{binary}", "--gin_search_paths=."]
    command += [f"--gin_file={f}" for f in gin_files]
    command += [f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.PROMPT_LENGTH=8", *flags]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def t5x_env(tmp_path_factory) -> dict:
    """The binaries' environment: this repository first, one CPU device, and one persistent JAX
    compilation cache for all of them (the second, identical training run reuses the first's)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(
        os.environ,
        PYTHONPATH=path,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.1",
    )


def _train(env: dict, model_dir: pathlib.Path) -> pathlib.Path:
    """`t5x.train`: 6 steps from the tiny checkpoint's step 2,500, a checkpoint every 3."""
    done = _run(
        env,
        "train",
        "prompt_finetune.gin",
        f"--gin.INITIAL_CHECKPOINT_PATH='{CHECKPOINT}'",
        "--gin.TRAIN_STEPS=2506",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.BATCH_SIZE=8",
        "--gin.EVAL_PERIOD=3",
        "--gin.EVAL_STEPS=1",
        "--gin.utils.SaveCheckpointConfig.period=3",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return model_dir


@pytest.fixture(scope="module")
def trained(t5x_env, tmp_path_factory) -> pathlib.Path:
    return _train(t5x_env, tmp_path_factory.mktemp("t5x_train"))


def _param_states(checkpoint: pathlib.Path) -> dict:
    """The optimizer state's leaves as stored by T5X (None where it stores none)."""
    item = orbax_format.find_orbax_item(str(checkpoint))
    metadata = ocp.PyTreeCheckpointer().metadata(item)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = dict(getattr(tree, "tree", tree))
    return t5_checkpoints.flatten(dict(tree["state"]["param_states"]))


def test_t5x_train_tunes_only_the_prompt_from_the_checkpoints_step(trained):
    assert sorted(p.name for p in trained.glob("checkpoint_*")) == ["checkpoint_2506"]  # keep 1
    checkpoint = trained / "checkpoint_2506"
    assert t5_checkpoints.checkpoint_step(checkpoint) == 2506  # T5X's orbax `state/step`
    _, params = t5_checkpoints.load_checkpoint(checkpoint)
    _, frozen = t5_checkpoints.load_checkpoint(ROOT / CHECKPOINT)
    flat, flat_frozen = t5_checkpoints.flatten(params), t5_checkpoints.flatten(frozen)
    assert set(flat) - set(flat_frozen) == {"encoder/prompt/prompt"}
    assert flat["encoder/prompt/prompt"].shape == (8, 128)
    for name, value in flat_frozen.items():
        np.testing.assert_array_equal(flat[name], value, err_msg=name)
    stored = {n for n, s in _param_states(checkpoint).items() if s is not None}
    assert stored and all(n.startswith("encoder/prompt/prompt/") for n in stored), stored
    metrics = trained / "inference_eval" / f"{TASK}-metrics.jsonl"
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [2503, 2506]


def test_t5x_train_twice_gives_the_same_prompt_and_predictions(trained, t5x_env, tmp_path):
    """gin_configs/t5x seed initialization, dropout and the data order (RANDOM_SEED): the same
    command again writes the same prompt and decodes the same in-training evaluations."""
    again = _train(t5x_env, tmp_path / "again")
    first, second = (
        t5_checkpoints.flatten(t5_checkpoints.load_checkpoint(d / "checkpoint_2506")[1])
        for d in (trained, again)
    )
    np.testing.assert_array_equal(first["encoder/prompt/prompt"], second["encoder/prompt/prompt"])
    for name in (f"{TASK}-metrics.jsonl", f"{TASK}-002503.jsonl", f"{TASK}-002506.jsonl"):
        want = (trained / "inference_eval" / name).read_text()
        assert (again / "inference_eval" / name).read_text() == want, name


def test_t5x_eval_and_infer_read_the_trained_checkpoint(trained, t5x_env, tmp_path):
    checkpoint = f"--gin.CHECKPOINT_PATH='{trained / 'checkpoint_2506'}'"
    done = _run(
        t5x_env, "eval", "prompt_eval.gin", checkpoint, f"--gin.EVAL_OUTPUT_DIR='{tmp_path}'"
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = (tmp_path / "inference_eval" / f"{TASK}-metrics.jsonl").read_text().splitlines()
    metrics = json.loads(line)  # the task's seqio metrics on the test split (eval.gin's)
    rows = (tmp_path / "inference_eval" / f"{TASK}-002506.jsonl").read_text().splitlines()
    rows = [json.loads(row) for row in rows]  # T5X's decoded examples, in the split's order
    inputs, targets = builtin.generate_examples("sentiment", "test")
    labels = builtin.LABELS["sentiment"]
    assert [r["input"]["inputs_pretokenized"] for r in rows] == list(inputs)
    assert [r["target"] for r in rows] == [labels.index(t) for t in targets]
    predictions = [r["prediction"] for r in rows]  # class ids; -1 for text that is no label
    assert metrics == {
        "step": 2506,
        "accuracy": pytest.approx(100 * np.mean([r["prediction"] == r["target"] for r in rows])),
        "invalid_predictions": predictions.count(-1),
    }
    out = tmp_path / "infer"
    done = _run(
        t5x_env, "infer", "prompt_infer.gin", checkpoint, f"--gin.INFER_OUTPUT_DIR='{out}'",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    (predictions,) = out.glob(f"{TASK}-predict.jsonl-*-of-*[0-9]")
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["inputs"]["inputs_pretokenized"] for r in rows] == list(inputs)
    assert all(isinstance(r["prediction"], str) for r in rows)
