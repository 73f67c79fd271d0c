"""ATTEMPT, MPT and DePT under T5X: the initial train state `t5x.train` builds for each.

`python -m t5x.train` with `gin_configs/t5x/runs/prompt_finetune.gin` restores the frozen T5 from
INITIAL_CHECKPOINT_PATH and, for every parameter matching "prompt" (its `assignment_map`), falls
back to the prompt module's own initializer. These tests build that state in-process with T5X's
own `TrainStateInitializer` and that restore config (a binary run per method is too slow for the
suite; the README's commands were run by hand), and check, against the checkpoint and
the papers: the frozen weights are the checkpoint's, the prompt parameters are the method's (no
frozen source prompt among them, MPT's P* read from MPT_SOURCE), and only they get optimizer
state. Two training steps equal our trainer's in `tests/t5x_gin_test.py` (every prompt gin file).

Needs T5X from source on PYTHONPATH; skipped without it.
"""

import importlib.util

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.t5 import checkpoints as t5_checkpoints
from tests.t5x_gin_test import CHECKPOINT, LENGTHS, ROOT, _t5x_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("t5x") is None, reason="T5X is not installed (see the README)"
)
P, H = 4, 128  # PROMPT_LENGTH of `_t5x_model`, the tiny T5's width


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(name="files", scope="module")
def _files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("methods")
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("source0", "source1", "shared"):
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], rng.normal(size=(P, H)).astype(np.float32))
    return dict(
        SOURCE_PROMPTS=[str(paths["source0"]), str(paths["source1"])],
        MPT_SOURCE=str(paths["shared"]),
    )


def _one_device_partitioner():
    """T5X's partitioner on one device, as the binaries run in tests/t5x_gin_test.py (T5X's CPU
    mesh would put this session's 8 simulated devices on the model axis)."""
    from jax.sharding import Mesh  # noqa: PLC0415
    from t5x import partitioning  # noqa: PLC0415

    class OneDevice(partitioning.PjitPartitioner):
        @property
        def mesh(self) -> Mesh:
            return Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))

    return OneDevice


def _initial_state(model):
    """What `t5x.train` starts from: prompt_finetune.gin's restore config, fallback to scratch."""
    from t5x import partitioning, utils  # noqa: PLC0415

    from prompt_tuning.t5x import optim as t5x_optim  # noqa: PLC0415

    shapes = {
        "encoder_input_tokens": (2, LENGTHS["inputs"]),
        "decoder_input_tokens": (2, LENGTHS["targets"]),
        "decoder_target_tokens": (2, LENGTHS["targets"]),
    }
    _OneDevice = _one_device_partitioner()  # noqa: N806
    rules = partitioning.standard_logical_axis_rules(
        additional_rules=t5x_optim.logical_axis_rules()
    )
    initializer = utils.TrainStateInitializer(
        optimizer_def=model.optimizer_def,
        init_fn=model.get_initial_variables,
        input_shapes=shapes,
        input_types=dict.fromkeys(shapes, jnp.int32),
        partitioner=_OneDevice(num_partitions=1, logical_axis_rules=rules),
    )
    restore = utils.RestoreCheckpointConfig(
        path=str(ROOT / CHECKPOINT), mode="specific", dtype="float32",
        fallback_to_scratch=True, assignment_map=((r".*prompt.*", None),),
    )  # fmt: skip
    state = initializer.from_checkpoint_or_scratch([restore], init_rng=jax.random.key(0))
    params = t5_checkpoints.flatten(jax.device_get(dict(state.params)))
    states = t5_checkpoints.flatten(dict(state.param_states))  # {parameter: its state or None}
    return params, {name for name, s in states.items() if s is not None}


def _check_frozen_and_prompt(params, with_state, prompt_shapes):
    """The frozen weights are the checkpoint's; the prompt's parameters alone have state."""
    _, frozen = t5_checkpoints.load_checkpoint(ROOT / CHECKPOINT)
    frozen = t5_checkpoints.flatten(frozen)
    for name, value in frozen.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    added = {name: params[name].shape for name in set(params) - set(frozen)}
    assert added == {f"encoder/prompt/{k}": v for k, v in prompt_shapes.items()}
    assert with_state == set(added)


def test_attempt_trains_target_and_attention_and_holds_no_source_parameter(files):
    params, with_state = _initial_state(_t5x_model("attempt.gin", files))
    # Asai et al. (2022): target prompt [P, H]; attention W_down [H, r], W_up [r, H] (r = 100)
    # and its layer norm; the two frozen source prompts are constants, not parameters.
    rank = 100
    shapes = {"prompt": (P, H), "attention/down": (H, rank), "attention/up": (rank, H)}
    shapes |= {"attention/scale": (H,), "attention/bias": (H,)}
    _check_frozen_and_prompt(params, with_state, shapes)
    sources = [np.load(f) for f in files["SOURCE_PROMPTS"]]
    # attempt.gin starts the target prompt from source 0, as the authors' code does.
    np.testing.assert_array_equal(params["encoder/prompt/prompt"], sources[0])
    assert not any(np.array_equal(v, sources[1]) for v in params.values())


def test_mpt_target_starts_from_the_shared_prompt_file(files):
    params, with_state = _initial_state(_t5x_model("mpt.gin", files))
    # Wang et al. (2023): P_1 = P* ∘ (u vᵀ), P* from the source stage, u and v ones.
    _check_frozen_and_prompt(params, with_state, {"shared": (P, H), "u": (1, P), "v": (1, H)})
    np.testing.assert_array_equal(params["encoder/prompt/shared"], np.load(files["MPT_SOURCE"]))
    np.testing.assert_array_equal(params["encoder/prompt/u"], np.ones((1, P)))
    np.testing.assert_array_equal(params["encoder/prompt/v"], np.ones((1, H)))


def test_dept_holds_prompt_and_low_rank_pair_with_two_optimizers(files):
    model = _t5x_model("dept.gin", files, ("gin_configs/t5x/models/dept.gin",))
    params, with_state = _initial_state(model)
    # Shi & Lipani (2024): prompt [m, H], A [s, r], B [r, H]; s = the inputs' length.
    m, r, s = P, gin.query_parameter("%DEPT_RANK"), LENGTHS["inputs"]
    shapes = {"prompt": (m, H), "low_rank_a": (s, r), "low_rank_b": (r, H)}
    _check_frozen_and_prompt(params, with_state, shapes)
    assert len(model.optimizer_def.sub_optimizers) == 2
