"""The training benchmark's workers: each runs in its own process (`train_benchmark.spawn`).

`run_jax_step` times the trainer's step as `benchmark.time_train_step` builds and runs it (jax,
flax and this library, not TensorFlow or seqio), `run_peft_step` HF PEFT prompt tuning of the
same architecture (torch, transformers and peft only: the parent passes the transformers
config), `run_matmul` the square-matmul peaks (`matmul`). Each returns a JSON-able dict with its
times, CPU times, losses and peak RSS. jax and torch are imported only inside the workers that
need them: importing this module imports neither.

    python -m prompt_tuning.perf.workers KIND SPEC_JSON
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prompt_tuning.perf import benchmark, matmul

SIZES = ("tiny", "small", "base", "large")
PEFT_MODES = ("eager", "compiled")


def model_config(size: str, dropout_rate: float = 0.1, dtype: str = "float32") -> Any:
    """The T5 1.1 `T5Config` of a named size ("tiny" is the unit-test model).

    Raises:
      ValueError: an unknown size.
    """
    from prompt_tuning.t5 import config as t5_config  # noqa: PLC0415

    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r} in --cases; choose one of {', '.join(SIZES)}.")
    return t5_config.by_size(size, dropout_rate=dropout_rate, dtype=dtype)


def run_jax_step(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Times the trainer's step (`prompt_tuning.perf.benchmark.time_train_step`) in this process
    (XLA_FLAGS and JAX_PLATFORMS already set): the run the trainer would build, on one device
    (JAX's first: the CPU, or a GPU with JAX_PLATFORMS=cuda). On a GPU, `device_peak_gib` is
    its peak memory in use (`memory_stats()["peak_bytes_in_use"]`)."""
    import jax  # noqa: PLC0415

    from prompt_tuning import prompts, t5  # noqa: PLC0415
    from prompt_tuning.parallel import partitioning  # noqa: PLC0415
    from prompt_tuning.train import builder  # noqa: PLC0415

    import_rss = benchmark.peak_rss_gib()
    if spec.get("prng_impl"):
        jax.config.update("jax_default_prng_impl", spec["prng_impl"])
    config = model_config(spec["size"], spec["dropout"], spec["dtype"])
    config = config.replace(remat_policy=spec["remat_layers"])
    run = builder.RunConfig(
        model=t5.EncoderDecoder(config, prompts.Prompt(spec["prompt_length"])),
        task_feature_lengths={"inputs": spec["input_length"], "targets": spec["target_length"]},
        batch_size=spec["batch"],
        random_seed=spec["seed"],
        trainable_params_regex=spec["trainable_regex"],
        frozen_dtype=spec["frozen_dtype"],
        # The per-token mean loss, as PEFT reports it (T5X's default LOSS_NORMALIZING_FACTOR sums).
        loss=builder.LossConfig(loss_normalizing_factor="NUM_REAL_TARGET_TOKENS"),
        mesh=partitioning.MeshConfig(num_devices=1),
    )
    result = benchmark.time_train_step(
        run, spec["warmup"], spec["steps"], spec["donate"], bool(spec.get("profile"))
    )
    stats = jax.devices()[0].memory_stats() or {}  # None on the CPU
    if "peak_bytes_in_use" in stats:
        result["device_peak_gib"] = stats["peak_bytes_in_use"] / 2**30
    result["jax_platform"] = jax.devices()[0].platform
    return dict(result, import_rss_gib=import_rss, imported=benchmark.heavy_modules())


def _peft_model(spec: Mapping[str, Any], device: str) -> Any:
    """PEFT prompt tuning of `spec["hf_config"]`'s T5 (random weights), in training mode."""
    import peft  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    torch.manual_seed(spec["seed"])
    # transformers 5 ties T5's lm_head to the embedding whatever the config says; the step's
    # compute is the same (the prompt alone is trained).
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
    model = peft.get_peft_model(model, prompt_config).to(device)
    model.train()
    return model


def _dynamo_counts() -> dict[str, int]:
    """torch.compile's counters so far: graphs compiled and graph breaks."""
    from torch._dynamo.utils import counters  # noqa: PLC0415

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def run_peft_step(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Times HF PEFT prompt tuning of the same model and shapes (torch, AdamW).

    `spec["hf_config"]` is the transformers config dict of the same architecture (computed by
    the parent, so this process imports neither jax nor this library); `spec["dtype"]`
    "bfloat16" runs the forward pass under `torch.autocast(device, dtype=torch.bfloat16)`;
    `spec["peft_mode"]` "compiled" runs the model (forward and, through AOTAutograd, backward)
    and AdamW's step as `torch.compile` graphs (inductor, default mode), "eager" (the default)
    as eager torch; `spec["device"]` is "cpu" (default) or "cuda". The first step (compiling,
    in compiled mode) and the other warm-up steps are untimed and reported apart
    (`compile_s`, `warmup_times_s`).
    """
    import contextlib  # noqa: PLC0415

    import peft  # noqa: F401, PLC0415 (loaded before import_rss is read)
    import torch  # noqa: PLC0415
    import transformers  # noqa: F401, PLC0415 (loaded before import_rss is read)

    import_rss = benchmark.peak_rss_gib()
    device, mode = spec.get("device", "cpu"), spec.get("peft_mode", "eager")
    if mode not in PEFT_MODES:
        raise ValueError(f"Unknown PEFT mode {mode!r}; use one of {PEFT_MODES}.")
    model = _peft_model(spec, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.3)
    b, t, s = spec["batch"], spec["input_length"], spec["target_length"]
    batch = benchmark.random_batch(b, t, s, spec["hf_config"]["vocab_size"], spec["seed"])
    inputs = torch.from_numpy(batch["encoder_input_tokens"]).long().to(device)
    labels = torch.from_numpy(batch["decoder_target_tokens"]).long().to(device)
    mask = torch.ones_like(inputs)
    autocast = spec["dtype"] == "bfloat16"
    forward, optimizer_step = model, optimizer.step
    if mode == "compiled":
        forward, optimizer_step = torch.compile(model), torch.compile(optimizer.step)
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None

    def run_step() -> float:
        context = torch.autocast(device, dtype=torch.bfloat16) if autocast else None
        with context or contextlib.nullcontext():
            loss = forward(input_ids=inputs, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer_step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        return loss.item()

    # Compiled: the first step compiles (untimed, at least one warm-up step).
    warmup = max(spec["warmup"], 1) if mode == "compiled" else spec["warmup"]
    warm = benchmark.time_steps(run_step, warmup, 0)["warmup_times_s"]
    compiled = _dynamo_counts()
    timed = benchmark.time_steps(run_step, 0, spec["steps"])
    result = {
        **timed,
        "warmup_times_s": warm,
        "peft_mode": mode,
        "device": device,
        "compile_s": warm[0] if mode == "compiled" else None,
        "trainable_params": sum(p.numel() for p in trainable),
        "import_rss_gib": import_rss,
        **benchmark.peft_process_facts(),
    }
    if mode == "compiled":
        # Graphs compiled in the warm-up (forward+backward and AdamW's step), and any compiled
        # while timed (a recompilation: 0 expected).
        after = _dynamo_counts()
        result["dynamo"] = compiled | {"graphs_while_timed": after["graphs"] - compiled["graphs"]}
    if device == "cuda":
        result["device_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def run_matmul(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The square-matmul peaks (GFLOP/s) of this process's backends and dtypes."""
    device = spec.get("device", "cpu")
    return {"matmul": matmul.measure(spec["backends"], spec["dtypes"], spec["n"], 8, device)}


WORKERS = {"jax": run_jax_step, "peft": run_peft_step, "matmul": run_matmul}


def main(argv: Sequence[str] | None = None) -> None:
    """Runs one worker: `python -m prompt_tuning.perf.workers KIND SPEC_JSON`; prints its JSON."""
    benchmark.worker_main(WORKERS, argv)


if __name__ == "__main__":
    main()
