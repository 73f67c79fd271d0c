"""Timing the trainer's step in this process: the JAX side of tools/benchmark_train.py.

`time_train_step` builds the run with `builder.build_run` (the trainer's model, optimizer,
shardings and jitted step), compiles the step for a random batch and times it; the process
measurements (`peak_rss_gib`, `cpu_seconds`, `minor_faults`, `time_steps`) serve every worker of
the benchmark. This module imports neither jax nor TensorFlow at import time, so a worker that
times another system (torch) loads only its own libraries.

Letters: B batch, T input length, S target length.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from prompt_tuning.train import builder

# Libraries a worker should not load unless it is their system (memory counts in its RSS).
HEAVY_MODULES = ("tensorflow", "seqio", "torch", "jax", "transformers")


# Seconds after which a worker prints every thread's Python stack to stderr (once): `spawn` sets it
# a little under the worker's timeout, so a worker killed for time says where it was.
STACKS_AFTER_ENV = "PROMPT_TUNING_BENCH_STACKS_AFTER"
_START = time.perf_counter()


def stage(message: str) -> None:
    """Logs a worker's progress to stderr (`[worker +12.3 s] message`): what a worker that fails
    or runs out of time had done (the parent shows its stderr's tail)."""
    print(f"[worker +{time.perf_counter() - _START:.1f} s] {message}", file=sys.stderr, flush=True)


def heavy_modules() -> list[str]:
    """Which of `HEAVY_MODULES` this process has imported."""
    return [name for name in HEAVY_MODULES if name in sys.modules]


def peak_rss_gib() -> float:
    """This process's peak resident set size (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_seconds() -> float:
    """User + system CPU seconds this process (all its threads) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def minor_faults() -> int:
    """Minor page faults this process has taken so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(run_step: Callable[[], Any], warmup: int, steps: int) -> dict[str, list[float]]:
    """`warmup` untimed then `steps` timed calls of `run_step() -> loss` (which blocks).

    Returns:
      `warmup_times_s` (wall seconds of each warm-up call, kept out of the rest), and per timed
      step `times_s`, `cpu_s`, `minor_faults` and `losses`.
    """
    warmup_times = []
    for _ in range(warmup):
        start = time.perf_counter()
        run_step()
        warmup_times.append(time.perf_counter() - start)
        stage(f"warm-up call {len(warmup_times)}: {warmup_times[-1]:.2f} s")
    out = {"warmup_times_s": warmup_times, "times_s": [], "cpu_s": [], "minor_faults": []}
    out["losses"] = []
    for _ in range(steps):
        start, cpu, faults = time.perf_counter(), cpu_seconds(), minor_faults()
        loss = run_step()
        out["times_s"].append(time.perf_counter() - start)
        out["cpu_s"].append(cpu_seconds() - cpu)
        # Pages the step touched for the first time (fresh memory the kernel had to zero).
        out["minor_faults"].append(minor_faults() - faults)
        out["losses"].append(float(loss))
    return out


def peft_process_facts() -> dict[str, Any]:
    """A PEFT worker's torch threads, library versions, peak RSS and heavy imports (JSON-able)."""
    import peft  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    return {
        "torch_threads": torch.get_num_threads(),
        "versions": versions | {"peft": peft.__version__},
        "peak_rss_gib": peak_rss_gib(),
        "imported": heavy_modules(),
    }


def worker_main(workers: Mapping[str, Callable[[Any], Any]], argv: Sequence[str] | None) -> None:
    """A benchmark worker process: `python -m MODULE KIND SPEC_JSON` runs `workers[KIND](spec)`
    and prints its JSON result on one line.

    Raises:
      SystemExit: not two arguments, or an unknown KIND.
    """
    import faulthandler  # noqa: PLC0415
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    from prompt_tuning.parallel import host_memory  # noqa: PLC0415

    kind, spec = sys.argv[1:] if argv is None else argv
    if kind not in workers:
        raise SystemExit(f"Unknown benchmark worker {kind!r}; use one of {sorted(workers)}.")
    if os.environ.get(STACKS_AFTER_ENV):
        faulthandler.dump_traceback_later(float(os.environ[STACKS_AFTER_ENV]))
    stage(f"{kind} worker started")
    # Before any import of jax or torch: their threads keep the malloc arena they start with.
    host_memory.reuse_freed_memory()  # PROMPT_TUNING_HOST_MALLOC, set by the parent
    print(json.dumps(workers[kind](json.loads(spec))), flush=True)


def random_batch(
    batch: int, input_length: int, target_length: int, vocab_size: int, seed: int
) -> dict[str, np.ndarray]:
    """Random non-padding tokens: inputs [B, T], targets [B, S] and targets shifted right."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    b, t, s = batch, input_length, target_length
    inputs = rng.integers(2, vocab_size, (b, t), dtype=np.int32)
    targets = rng.integers(2, vocab_size, (b, s), dtype=np.int32)
    shifted = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1)  # [B, S]
    return {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": shifted,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((b, s), np.float32),
    }


def tree_shapes(tree: Any) -> dict[str, list[int]]:
    """`{"/"-joined path: shape}` of every array in `tree` (JSON-able)."""
    import jax  # noqa: PLC0415

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in leaves}


def time_train_step(
    config: builder.RunConfig,
    warmup: int,
    steps: int,
    donate: bool = True,
    profile: bool = False,
) -> dict[str, Any]:
    """Builds `config`'s run (`builder.build_run`), compiles its step and times it.

    Args:
      config: the run (`task_feature_lengths`, `batch_size` and `random_seed` also make the
        random batch).
      warmup: untimed steps first.
      steps: timed steps.
      donate: donate the state to the step (the trainer does).
      profile: also profile one step (`profiling.profile_compiled`).

    Returns:
      JSON-able: `build_s` (building the run: initialising the random model), `compile_s`,
      `compile_rss_gib`, the `time_steps` lists, `dot_flops` and
      `xla_flops` of the compiled step, `weight_gradient_ops` (frozen-weight gradients computed:
      0 expected) with examples, `opt_state_shapes` (`tree_shapes` of the optimizer state),
      `peak_rss_gib`, and `profile` when asked.
    """
    import jax  # noqa: PLC0415

    from prompt_tuning.parallel import host_memory, partitioning  # noqa: PLC0415
    from prompt_tuning.perf import costs, profiling  # noqa: PLC0415
    from prompt_tuning.train import builder  # noqa: PLC0415

    start = time.perf_counter()
    run = builder.build_run(config, donate=donate)
    build_s = time.perf_counter() - start
    stage(f"run built in {build_s:.1f} s (model initialised)")
    opt_state_shapes = tree_shapes(run.state.opt_state)
    lengths = config.task_feature_lengths
    numpy_batch = random_batch(
        config.batch_size,
        lengths["inputs"],
        lengths["targets"],
        run.model.config.vocab_size,
        config.random_seed,
    )
    batch = jax.device_put(numpy_batch, partitioning.data_sharding(run.mesh))
    start = time.perf_counter()
    lowered = run.lower(batch)
    stage(f"step lowered in {time.perf_counter() - start:.1f} s")
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    stage(f"step compiled ({compile_s:.1f} s with lowering)")
    # As the trainer: the compiler's freed memory goes back to the kernel before the first step.
    host_memory.release_free_memory()
    hlo = compiled.as_text()
    weight_ops = costs.weight_gradient_ops(hlo, costs.frozen_weight_shapes(run.frozen))
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    stage(f"compiled step read ({len(hlo)} characters of HLO)")
    state = run.state

    def run_step() -> Any:
        nonlocal state
        state, metrics = compiled(state, run.frozen, batch, run.rng)
        jax.block_until_ready(state)
        return metrics["loss"]

    result = {
        "build_s": build_s,
        "compile_s": compile_s,
        "compile_rss_gib": peak_rss_gib(),
        **time_steps(run_step, warmup, steps),
        "dot_flops": costs.dot_flops(hlo),
        "xla_flops": float(cost["flops"]) if cost and "flops" in cost else None,
        "weight_gradient_ops": len(weight_ops),
        "weight_gradient_examples": weight_ops[:3],
        "opt_state_shapes": opt_state_shapes,
        "peak_rss_gib": peak_rss_gib(),
    }
    if profile:
        result["profile"] = profiling.profile_compiled(run_step, hlo, steps=1, top=12)
    return result
