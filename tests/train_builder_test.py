"""`builder.build_run`: the trainer, the AOT simulation and the benchmark build one program.

The drift test: before `build_run`, tools/aot_memory.py and the benchmark created Adafactor
without the parameters' logical axes, so for a prompt of P >= 128 rows their optimizer factored
the prompt's second moment (T5X's size heuristic) while the trainer kept it whole (Lester et al.'s
`prompt: NONE` factor rule): they measured another program than the one users train.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.parallel import partitioning
from prompt_tuning.perf import aot, benchmark, workers
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network
from prompt_tuning.train import builder, setup

H = 128  # wide enough for T5X's size heuristic (min_dim_size_to_factor=128) to factor [P, H]
LENGTHS = {"inputs": 8, "targets": 4}
B = 2
CONFIG = t5_config.tiny(emb_dim=H, num_encoder_layers=1, num_decoder_layers=1)


def run_config(prompt_length: int, **overrides) -> builder.RunConfig:
    module = network.EncoderDecoder(CONFIG, prompt=prompts.Prompt(prompt_length))
    fields = dict(
        model=module,
        task_feature_lengths=LENGTHS,
        batch_size=B,
        task="drift",
        mesh=partitioning.MeshConfig(num_devices=1),
    )
    return builder.RunConfig(**(fields | overrides))


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("prompt_length", [100, 150])
def test_aot_and_benchmark_optimizer_state_equal_the_trainers(tmp_path, monkeypatch, prompt_length):
    trainer_run = setup.setup_run(run_config(prompt_length, model_dir=tmp_path), 2, keep=1)
    trainer_run.logger.close()
    trainer_run.checkpointer.close()
    trainer_state = trainer_run.state.opt_state
    trainer_shapes = benchmark.tree_shapes(trainer_state)
    # Lester et al. never factor a prompt's second moment: v is [P, H], the factors are dummies.
    prompt_moments = {k: v for k, v in trainer_shapes.items() if "['prompt']" in k}
    assert sorted(prompt_moments.values()) == [[1], [1], [prompt_length, H]]

    # The AOT program's arguments are exactly the trainer's state, frozen weights and batch.
    report = aot.train_step_memory(run_config(prompt_length))
    batch = B * (LENGTHS["inputs"] + 3 * LENGTHS["targets"]) * 4
    expected = nbytes(trainer_run.state) + nbytes(trainer_run.frozen) + batch + 8  # + the key
    assert 0 <= expected - report.argument_bytes <= 12  # XLA may not count the two scalars

    # The benchmark worker (tools/benchmark_train.py's) runs the trainer's optimizer state.
    monkeypatch.setattr(workers, "model_config", lambda *_: CONFIG)
    spec = dict(size="tiny", dropout=0.0, dtype="float32", remat_layers="none", seed=0)
    spec |= dict(prompt_length=prompt_length, input_length=8, target_length=4, batch=B)
    spec |= dict(trainable_regex="prompt", frozen_dtype=None, donate=True, warmup=0, steps=1)
    result = workers.run_jax_step(spec)
    assert result["opt_state_shapes"] == trainer_shapes
    assert np.isfinite(result["losses"]).all() and result["weight_gradient_ops"] == 0


def test_abstract_run_has_the_real_runs_shapes_dtypes_and_shardings():
    config = run_config(
        4, frozen_dtype="bfloat16", mesh=partitioning.MeshConfig(num_partitions=2), batch_size=4
    )
    plan = builder.build_run(config, abstract=True)
    real = builder.build_run(config)
    assert dict(plan.mesh.shape) == {"data": 4, "model": 2}
    for tree in ("state", "frozen"):
        planned = jax.tree_util.tree_flatten_with_path(getattr(plan, tree))[0]
        built = jax.tree_util.tree_flatten_with_path(getattr(real, tree))[0]
        assert [p for p, _ in planned] == [p for p, _ in built]
        for (path, a), (_, b) in zip(planned, built, strict=True):
            assert (a.shape, a.dtype) == (b.shape, b.dtype), path
            assert a.sharding.is_equivalent_to(b.sharding, len(a.shape)), path
    # FROZEN_DTYPE casts the matmul weights only; a kernel is split over the model axis.
    kernel = real.frozen["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert kernel.dtype == jnp.bfloat16 and "model" in kernel.sharding.spec
    assert real.frozen["encoder"]["encoder_norm"]["scale"].dtype == jnp.float32
    # The step compiled for the plan runs the real state: the counter starts at first_step.
    batch = {k: jnp.ones(x.shape, x.dtype) for k, x in plan.abstract_batch().items()}
    state, metrics = real.step_fn(real.state, real.frozen, batch, real.rng)
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_first_step_starts_the_counters():
    real = builder.build_run(run_config(4, first_step=1000))
    assert int(real.state.step) == 1000 and real.first_step == 1000
    schedule = [s for s in jax.tree.leaves(real.state.opt_state) if s.shape == ()]
    counters = [int(s) for s in schedule if jnp.issubdtype(s.dtype, jnp.integer)]
    assert counters == [1000, 1000]  # Adafactor's decay step and the schedule's


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": None}, "BATCH_SIZE"),
        ({"task_feature_lengths": None}, "TASK_FEATURE_LENGTHS"),
        ({"batch_size": 3, "mesh": partitioning.MeshConfig()}, "BATCH_SIZE 3 is not divisible"),
        ({"mesh": partitioning.MeshConfig(num_partitions=3)}, "NUM_PARTITIONS=3"),
    ],
)
def test_a_config_that_cannot_build_names_the_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        builder.build_run(run_config(4, **overrides), abstract=True)
