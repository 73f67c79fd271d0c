"""The benchmark's workers: each runs in its own process (see tools/benchmark_train.py).

`run_jax_step` times the project's jitted `trainer.train_step` (it imports jax, flax and this
library, not TensorFlow or seqio), `run_peft_step` HF PEFT prompt tuning of the same architecture
(torch, transformers and peft only: the parent passes the transformers config), `run_matmul` the
square-matmul peaks. Each returns a JSON-able dict with its times, CPU times, losses and peak RSS.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping
from typing import Any

from tools import benchmark_matmul

SIZES = ("tiny", "small", "base", "large")


def model_config(size: str, dropout_rate: float = 0.1, dtype: str = "float32") -> Any:
    """The T5 1.1 `T5Config` of a named size ("tiny" is the unit-test model).

    Raises:
      ValueError: an unknown size.
    """
    from prompt_tuning.t5 import config as t5_config  # noqa: PLC0415

    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r} in --cases; choose one of {', '.join(SIZES)}.")
    return t5_config.by_size(size, dropout_rate=dropout_rate, dtype=dtype)


def _random_batch(spec: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """Random non-padding tokens: inputs [B, T], targets [B, S] and targets shifted right."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(spec["seed"])
    b, t, s = spec["batch"], spec["input_length"], spec["target_length"]
    inputs = rng.integers(2, vocab_size, (b, t), dtype=np.int32)
    targets = rng.integers(2, vocab_size, (b, s), dtype=np.int32)
    shifted = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1)  # [B, S]
    return {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": shifted,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((b, s), np.float32),
    }


# Libraries a worker should not load unless it is their system (memory counts in its RSS).
HEAVY_MODULES = ("tensorflow", "seqio", "torch", "jax", "transformers")


def _heavy_modules() -> list[str]:
    """Which of `HEAVY_MODULES` this process has imported."""
    import sys  # noqa: PLC0415

    return [name for name in HEAVY_MODULES if name in sys.modules]


def _peak_rss_gib() -> float:
    """This process's peak resident set size (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _cpu_seconds() -> float:
    """User + system CPU seconds this process (all its threads) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _minor_faults() -> int:
    """Minor page faults this process has taken so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_steps(run_step, warmup: int, steps: int) -> dict[str, list[float]]:
    """`warmup` untimed then `steps` timed calls of `run_step() -> loss` (which blocks)."""
    for _ in range(warmup):
        run_step()
    out = {"times_s": [], "cpu_s": [], "minor_faults": [], "losses": []}
    for _ in range(steps):
        start, cpu, faults = time.perf_counter(), _cpu_seconds(), _minor_faults()
        loss = run_step()
        out["times_s"].append(time.perf_counter() - start)
        out["cpu_s"].append(_cpu_seconds() - cpu)
        # Pages the step touched for the first time (fresh memory the kernel had to zero).
        out["minor_faults"].append(_minor_faults() - faults)
        out["losses"].append(float(loss))
    return out


def run_jax_step(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Times the project's jitted `trainer.train_step` in this process (XLA_FLAGS already set)."""
    import functools  # noqa: PLC0415

    import jax  # noqa: PLC0415

    from prompt_tuning import prompts, t5  # noqa: PLC0415
    from prompt_tuning.parallel import host_memory, partitioning
    from prompt_tuning.perf import costs, profiling
    from prompt_tuning.train import optimizers, trainer  # noqa: PLC0415
    from prompt_tuning.train import params as run_params  # noqa: PLC0415
    from prompt_tuning.train import step as step_lib  # noqa: PLC0415
    from prompt_tuning.train.model import PromptModel  # noqa: PLC0415

    import_rss = _peak_rss_gib()
    if spec.get("prng_impl"):
        jax.config.update("jax_default_prng_impl", spec["prng_impl"])
    config = model_config(spec["size"], spec["dropout"], spec["dtype"])
    config = config.replace(remat_policy=spec["remat_layers"])
    module = t5.EncoderDecoder(config, prompts.Prompt(spec["prompt_length"]))
    # The per-token mean loss, as PEFT reports it (T5X's default LOSS_NORMALIZING_FACTOR sums).
    model = PromptModel(module, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    mesh = partitioning.make_mesh(1, jax.devices()[:1])
    lengths = {"inputs": spec["input_length"], "targets": spec["target_length"]}
    trainable, frozen = run_params.initial_params(
        model,
        mesh,
        jax.random.key(spec["seed"]),
        lengths,
        None,
        spec["trainable_regex"],
        spec["frozen_dtype"],
        log=None,
    )
    optimizer = optimizers.adafactor()
    state = jax.jit(functools.partial(step_lib.init_state, optimizer))(trainable)
    step = jax.jit(
        functools.partial(trainer.train_step, model=model, optimizer=optimizer),
        donate_argnums=(0,) if spec["donate"] else (),
        # The trainer's XLA options (with remat on CPU: the memory-optimised scheduler).
        compiler_options=step_lib.compiler_options(model, mesh),
    )
    batch = jax.device_put(_random_batch(spec, config.vocab_size))
    rng = jax.random.key(spec["seed"] + 1)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch, rng).compile()
    compile_s = time.perf_counter() - start
    # As the trainer: the compiler's freed memory goes back to the kernel before the first step.
    host_memory.release_free_memory()
    hlo = compiled.as_text()
    weight_ops = costs.weight_gradient_ops(hlo, costs.frozen_weight_shapes(frozen))
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost

    def run_step() -> Any:
        nonlocal state
        state, metrics = compiled(state, frozen, batch, rng)
        jax.block_until_ready(state)
        return metrics["loss"]

    result = {
        "compile_s": compile_s,
        "compile_rss_gib": _peak_rss_gib(),
        **_time_steps(run_step, spec["warmup"], spec["steps"]),
        "dot_flops": costs.dot_flops(hlo),
        "xla_flops": float(cost["flops"]) if cost and "flops" in cost else None,
        "weight_gradient_ops": len(weight_ops),
        "weight_gradient_examples": weight_ops[:3],
        "import_rss_gib": import_rss,
        "peak_rss_gib": _peak_rss_gib(),
        "imported": _heavy_modules(),
    }
    if spec.get("profile"):
        result["profile"] = profiling.profile_compiled(run_step, hlo, steps=1, top=12)
    return result


def run_peft_step(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Times HF PEFT prompt tuning of the same model and shapes (torch CPU, AdamW).

    `spec["hf_config"]` is the transformers config dict of the same architecture (computed by
    the parent, so this process imports neither jax nor this library); `spec["dtype"]`
    "bfloat16" runs the forward pass under `torch.autocast("cpu", dtype=torch.bfloat16)`.
    """
    import contextlib  # noqa: PLC0415

    import peft  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    import_rss = _peak_rss_gib()
    torch.manual_seed(spec["seed"])
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config.from_dict(spec["hf_config"])
    )
    # Encoder-only prompt, as Lester et al. (PEFT's seq2seq default of 2 submodules would also
    # prepend a prompt to the decoder).
    prompt_config = peft.PromptTuningConfig(
        task_type=peft.TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=spec["prompt_length"],
        num_transformer_submodules=1,
    )
    model = peft.get_peft_model(model, prompt_config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.3)
    batch = _random_batch(spec, spec["hf_config"]["vocab_size"])
    inputs = torch.from_numpy(batch["encoder_input_tokens"]).long()
    labels = torch.from_numpy(batch["decoder_target_tokens"]).long()
    mask = torch.ones_like(inputs)
    autocast = spec["dtype"] == "bfloat16"

    def run_step() -> float:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else None
        with context or contextlib.nullcontext():
            loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return {
        **_time_steps(run_step, spec["warmup"], spec["steps"]),
        "trainable_params": sum(p.numel() for p in trainable),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "import_rss_gib": import_rss,
        "peak_rss_gib": _peak_rss_gib(),
        "imported": _heavy_modules(),
    }


def run_matmul(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The square-matmul peaks (GFLOP/s) of this process's backends and dtypes."""
    return {"matmul": benchmark_matmul.measure(spec["backends"], spec["dtypes"], spec["n"], 8)}


WORKERS = {"jax": run_jax_step, "peft": run_peft_step, "matmul": run_matmul}
