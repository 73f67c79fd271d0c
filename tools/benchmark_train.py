"""Training-step benchmark: the project's prompt-tuning `train_step` on random T5 1.1 models.

    python tools/benchmark_train.py --config small --batch 8 32 --steps 5 --warmup 2 --vs-peft

Setting (Lester et al., 2021): T5 1.1 of the given size with random weights, a 100-token prompt on
the encoder only, 128 input tokens (228 with the prompt), 8 target tokens, dropout 0.1, Lester's
Adafactor, gradients only with respect to the prompt. Each (config, batch) runs in its own
subprocess (XLA_FLAGS apply at jax's import, and its peak RSS is its own). Reported per
configuration: the median seconds per step after `--warmup` untimed steps (compilation is done
ahead of time and reported apart), examples/s, tokens/s (real input + target tokens, the prompt not
counted), peak RSS, achieved FLOP/s by the count of `step_flops` and its fraction of the square
matmul peak measured in the same run and dtype, XLA's own FLOP estimate, the number of frozen-weight
gradients found in the compiled HLO (`weight_gradient_ops`, 0 when only the prompt is
differentiated), and the losses of the timed steps (to compare settings for correctness).

`cpu_s_per_step_median` (CPU seconds of all the worker's threads per step) is reported next to wall
time because it is much less sensitive to other processes sharing the cores; quote wall time only
from an otherwise idle machine, and the 1-minute load average (`load_avg_1m`) beside it.

`--vs-peft` also times HF PEFT prompt tuning (torch, float32, AdamW) of the same configuration and
reports `peft_time_ratio` (PEFT s/step / ours) and `memory_ratio` (our peak RSS / PEFT's).

Knobs for finding the fastest correct setting: `--xla-flags`, `--dtype bfloat16` (activations),
`--frozen-dtype bfloat16`, `--prng-impl`, `--no-donate` and `--remat-layers none|full|dots` (the
model's `T5Config.remat_policy`: every encoder/decoder layer rematerialised). Defaults are the
library's defaults. Measured on a 2-core AMD EPYC (Zen 5) with jax 0.10.2: XLA:CPU already runs the
step's matmuls as YNNPACK fusions, and `--xla_cpu_use_onednn` / `--xla_cpu_use_xnnpack` compile
this step to the identical HLO, so `DEFAULT_XLA_FLAGS` is empty.

Output: one JSON document on stdout, `{"runs": [...], "summary": {...}}`; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

if __package__ in (None, ""):  # run as `python tools/benchmark_train.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tools import benchmark_matmul  # noqa: E402

SIZES = ("tiny", "small", "base", "large")
PEFT_NOTE = (
    "PEFT timed with the installed transformers (4.57: T5 1.1's lm_head is untied, as here); "
    "ANCHORS.md measured transformers 5.23, which ties lm_head to the input embedding (about "
    "the same work per step)."
)


def model_config(size: str, dropout_rate: float = 0.1, dtype: str = "float32") -> Any:
    """The T5 1.1 `T5Config` of a named size ("tiny" is the unit-test model).

    Args:
      size: "tiny", "small", "base" or "large".
      dropout_rate: dropout of the benchmark (Lester et al. train with 0.1).
      dtype: activation dtype name.

    Returns:
      A `prompt_tuning.t5.T5Config`.

    Raises:
      ValueError: an unknown size.
    """
    import jax.numpy as jnp  # noqa: PLC0415

    from prompt_tuning.t5 import config as t5_config  # noqa: PLC0415

    if size not in SIZES:
        raise ValueError(f"Unknown --config {size!r}; choose one of {', '.join(SIZES)}.")
    overrides = {"dropout_rate": dropout_rate, "dtype": jnp.dtype(dtype)}
    if size == "tiny":
        return t5_config.tiny(**overrides)
    return t5_config.t5_1_1(size, **overrides)


def step_flops(
    config: Any,
    batch: int,
    input_length: int,
    prompt_length: int,
    target_length: int,
    full_finetuning: bool = False,
) -> dict[str, float]:
    """FLOPs of one training step by ANCHORS.md's count (a multiply-add is 2 FLOPs).

    With d = emb_dim, f = mlp_dim, h = heads * head_dim, L_e = prompt + input length, L_d =
    target length, T_e = B L_e, T_d = B L_d and g the number of MLP input kernels (2 for T5 1.1):
    lin = n_enc T_e (8dh + 2(g+1)df) + n_dec T_d (12dh + 2(g+1)df) + n_dec T_e 4dh + T_d 2dV,
    att = n_enc T_e 4 L_e h + n_dec T_d 4 (L_d + L_e) h, forward = lin + att, and a prompt-tuning
    step = forward + lin + 2 att (activation gradients only); full fine-tuning adds another lin.

    Args:
      config: a `T5Config`.
      batch: B.
      input_length: real input tokens per example.
      prompt_length: P (prepended on the encoder).
      target_length: L_d.
      full_finetuning: count weight gradients too.

    Returns:
      {"linear", "attention", "forward", "step"} in FLOPs.
    """
    d, f, v = config.emb_dim, config.mlp_dim, config.vocab_size
    h = config.num_heads * config.head_dim
    n_enc, n_dec = config.num_encoder_layers, config.num_decoder_layers
    mlp = 2 * (len(config.mlp_activations) + 1) * d * f  # per token: wi_0, wi_1, wo
    enc_len = prompt_length + input_length
    t_e, t_d = batch * enc_len, batch * target_length
    linear = (
        n_enc * t_e * (8 * d * h + mlp)
        + n_dec * t_d * (12 * d * h + mlp)
        + n_dec * t_e * 4 * d * h
        + t_d * 2 * d * v
    )
    attention = n_enc * t_e * 4 * enc_len * h + n_dec * t_d * 4 * (target_length + enc_len) * h
    forward = linear + attention
    step = forward + linear + 2 * attention + (linear if full_finetuning else 0)
    return {"linear": linear, "attention": attention, "forward": forward, "step": step}


_HLO_OP = re.compile(r"=\s*[a-z0-9]+\[([0-9,]+)\]\S*\s+(dot|convolution|custom-call|scatter)\(")


def weight_gradient_ops(hlo_text: str, weight_shapes: Sequence[Sequence[int]]) -> list[str]:
    """HLO matmuls/scatters whose result has a frozen weight's shape (i.e. weight gradients).

    A forward or activation-gradient matmul of a T5 produces `[B, L, ...]`-shaped results; only a
    weight gradient (`x^T dy`, or a scatter-add into the embedding table) has a kernel's shape,
    e.g. `[H, F]`. Pick batch and lengths so that no B*L equals a weight dimension.

    Args:
      hlo_text: (optimized) HLO module text, e.g. `compiled.as_text()`.
      weight_shapes: shapes of the frozen weights.

    Returns:
      The offending HLO lines (empty when no frozen weight gets a gradient).
    """
    shapes = {tuple(int(n) for n in shape) for shape in weight_shapes if len(shape) >= 2}
    found = []
    for line in hlo_text.splitlines():
        match = _HLO_OP.search(line)
        if match and tuple(int(n) for n in match.group(1).split(",")) in shapes:
            found.append(line.strip()[:200])
    return found


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


def _cpu_seconds() -> float:
    """User + system CPU seconds this process (all its threads) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time_steps(run_step, warmup: int, steps: int) -> dict[str, list[float]]:
    """Runs `warmup` untimed then `steps` timed calls of `run_step() -> loss` (which blocks).

    Returns:
      `times_s` (wall seconds per step), `cpu_s` (CPU seconds of all threads per step; less
      sensitive to other processes' load than wall time) and `losses`.
    """
    for _ in range(warmup):
        run_step()
    out = {"times_s": [], "cpu_s": [], "losses": []}
    for _ in range(steps):
        start, cpu = time.perf_counter(), _cpu_seconds()
        loss = run_step()
        out["times_s"].append(time.perf_counter() - start)
        out["cpu_s"].append(_cpu_seconds() - cpu)
        out["losses"].append(float(loss))
    return out


def _frozen_weight_shapes(trainable: Any, frozen: Any) -> list[tuple[int, ...]]:
    """Shapes of every model weight that is not a prompt parameter."""
    import jax  # noqa: PLC0415

    from prompt_tuning.train import optimizers  # noqa: PLC0415

    shapes = []
    for tree in (trainable, frozen):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if "prompt" not in optimizers.path_name(path):
                shapes.append(tuple(leaf.shape))
    return shapes


def _xla_costs(compiled: Any) -> dict[str, float | None]:
    """XLA's FLOP estimate and temporary-buffer size of a compiled step (None if unavailable)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    memory = compiled.memory_analysis()
    return {
        "xla_flops": float(cost["flops"]) if cost and "flops" in cost else None,
        "xla_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
    }


def run_jax_step(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Times the project's jitted `trainer.train_step` in this process (XLA_FLAGS already set).

    Args:
      spec: size, batch, input/prompt/target lengths, dropout, dtype, frozen_dtype, remat_layers,
        donate, trainable_regex, seed, warmup, steps.

    Returns:
      A result dict: times, losses, compile time, XLA costs, weight-gradient ops, and peak RSS
      after the imports (`import_rss_gib`), after initialization and compilation
      (`compile_rss_gib`) and at the end (`peak_rss_bytes`).
    """
    import functools  # noqa: PLC0415

    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from prompt_tuning import prompts, t5  # noqa: PLC0415
    from prompt_tuning.train import optimizers, partitioning, trainer  # noqa: PLC0415
    from prompt_tuning.train import params as run_params  # noqa: PLC0415
    from prompt_tuning.train.model import PromptModel  # noqa: PLC0415

    import_rss = _peak_rss_bytes()
    if spec.get("prng_impl"):
        jax.config.update("jax_default_prng_impl", spec["prng_impl"])
    config = model_config(spec["size"], spec["dropout"], spec["dtype"])
    config = config.replace(remat_policy=spec.get("remat_layers") or "none")
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
    state = trainer.TrainState(
        jnp.zeros([], jnp.int32), trainable, jax.jit(optimizer.init)(trainable)
    )
    step = jax.jit(
        functools.partial(trainer.train_step, model=model, optimizer=optimizer),
        donate_argnums=(0,) if spec["donate"] else (),
    )
    batch = jax.device_put(_random_batch(spec, config.vocab_size))
    rng = jax.random.key(spec["seed"] + 1)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch, rng).compile()
    compile_s = time.perf_counter() - start
    compile_rss = _peak_rss_bytes()
    weight_ops = weight_gradient_ops(compiled.as_text(), _frozen_weight_shapes(trainable, frozen))

    def run_step() -> Any:
        nonlocal state
        state, metrics = compiled(state, frozen, batch, rng)
        jax.block_until_ready(state)
        return metrics["loss"]

    return {
        **_time_steps(run_step, spec["warmup"], spec["steps"]),
        "compile_s": compile_s,
        "weight_gradient_ops": len(weight_ops),
        "weight_gradient_examples": weight_ops[:3],
        **_xla_costs(compiled),
        "import_rss_gib": import_rss / 2**30,
        "compile_rss_gib": compile_rss / 2**30,
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def run_peft_step(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Times HF PEFT prompt tuning of the same model and shapes (torch CPU, float32, AdamW).

    Args:
      spec: as for `run_jax_step` (dtype, remat_layers and donation do not apply).

    Returns:
      A result dict: times, losses, peak RSS, torch threads, library versions.
    """
    import peft  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from prompt_tuning.t5 import hf_format  # noqa: PLC0415

    import_rss = _peak_rss_bytes()
    config = model_config(spec["size"], spec["dropout"])
    torch.manual_seed(spec["seed"])
    # The same architecture as ours, written as the config.json our HF exporter writes.
    hf_config = transformers.T5Config.from_dict(hf_format.config_to_hf(config))
    model = transformers.T5ForConditionalGeneration(hf_config)
    # Encoder-only prompt, as Lester et al. and ANCHORS.md (PEFT's seq2seq default of 2 submodules
    # would also prepend a prompt to the decoder).
    prompt_config = peft.PromptTuningConfig(
        task_type=peft.TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=spec["prompt_length"],
        num_transformer_submodules=1,
    )
    model = peft.get_peft_model(model, prompt_config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.3)
    batch = _random_batch(spec, config.vocab_size)
    inputs = torch.from_numpy(batch["encoder_input_tokens"]).long()
    labels = torch.from_numpy(batch["decoder_target_tokens"]).long()
    mask = torch.ones_like(inputs)

    def run_step() -> float:
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
        "import_rss_gib": import_rss / 2**30,
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def run_matmul(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The square-matmul peaks (GFLOP/s) of this process's backends and dtypes."""
    results = benchmark_matmul.measure(
        spec["backends"], spec["dtypes"], spec["matmul_size"], spec["matmul_repeats"]
    )
    return {"matmul": results}


WORKERS = {"jax": run_jax_step, "peft": run_peft_step, "matmul": run_matmul}


def _spawn(kind: str, spec: Mapping[str, Any], xla_flags: str, timeout: float) -> dict[str, Any]:
    """Runs one worker in a fresh interpreter with the given XLA_FLAGS; returns its JSON result.

    Raises:
      RuntimeError: the worker failed or printed no JSON (its stderr tail is included).
    """
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu", USE_TF="0")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", kind]
    load_before = os.getloadavg()[0]
    done = subprocess.run(
        command + ["--spec", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(
            f"The {kind} benchmark worker failed (exit {done.returncode}) for {dict(spec)}; "
            f"its stderr ends with:\n{done.stderr[-3000:]}"
        )
    result = json.loads(lines[-1])
    result["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def _summarize(
    system: str, spec: Mapping[str, Any], raw: Mapping[str, Any], peak_gflops: float | None
) -> dict[str, Any]:
    """One configuration's JSON record from a worker's raw result."""
    import statistics  # noqa: PLC0415

    config = model_config(spec["size"], spec["dropout"])
    flops = step_flops(
        config, spec["batch"], spec["input_length"], spec["prompt_length"], spec["target_length"]
    )["step"]
    median = statistics.median(raw["times_s"])
    cpu_median = statistics.median(raw["cpu_s"])
    achieved = flops / median
    record = {
        "system": system,
        "config": spec["size"],
        "batch": spec["batch"],
        "step_s_median": median,
        "cpu_s_per_step_median": cpu_median,
        "examples_per_s": spec["batch"] / median,
        "tokens_per_s": spec["batch"] * (spec["input_length"] + spec["target_length"]) / median,
        "peak_rss_gib": raw["peak_rss_bytes"] / 2**30,
        "flops_per_step": flops,
        "achieved_gflops": achieved / 1e9,
        "matmul_peak_gflops": peak_gflops,
        "fraction_of_matmul_peak": None if not peak_gflops else achieved / 1e9 / peak_gflops,
    }
    if system == "ours":
        for key in ("dtype", "frozen_dtype", "remat_layers", "donate", "prng_impl"):
            record[key] = spec[key]
    else:
        record["dtype"] = "float32"
    return {**record, **{k: v for k, v in raw.items() if k not in ("peak_rss_bytes",)}}


def _peak(matmul: Sequence[Mapping[str, Any]], backend: str, dtype: str) -> float | None:
    """The measured GFLOP/s of one (backend, dtype), or None when not measured."""
    for entry in matmul:
        if entry["backend"] == backend and entry["dtype"] == dtype:
            return entry["gflops"]
    return None


def _comparisons(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ours vs PEFT per (config, batch): speed and memory ratios.

    `peft_time_ratio` and `peft_cpu_ratio` are PEFT's wall / CPU seconds per step over ours (> 1:
    we are faster); `memory_ratio` is our peak RSS over PEFT's (< 1: we use less).
    """
    out = []
    for ours in (r for r in runs if r["system"] == "ours"):
        for theirs in runs:
            same = theirs["config"] == ours["config"] and theirs["batch"] == ours["batch"]
            if theirs["system"] == "peft" and same:
                out.append(
                    {
                        "config": ours["config"],
                        "batch": ours["batch"],
                        "ours_step_s": ours["step_s_median"],
                        "peft_step_s": theirs["step_s_median"],
                        "peft_time_ratio": theirs["step_s_median"] / ours["step_s_median"],
                        "peft_cpu_ratio": theirs["cpu_s_per_step_median"]
                        / ours["cpu_s_per_step_median"],
                        "ours_peak_rss_gib": ours["peak_rss_gib"],
                        "peft_peak_rss_gib": theirs["peak_rss_gib"],
                        "memory_ratio": ours["peak_rss_gib"] / theirs["peak_rss_gib"],
                    }
                )
    return out


def _machine() -> dict[str, Any]:
    """CPU model, core count and the Python/jax versions of this run."""
    import jax  # noqa: PLC0415

    model = platform.processor()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }


# XLA:CPU flags the benchmark runs with unless --xla-flags is given (see the module docstring).
DEFAULT_XLA_FLAGS = ""


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["small"], choices=SIZES)
    parser.add_argument("--batch", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--vs-peft", action="store_true", help="also time HF PEFT (torch)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--frozen-dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument(
        "--remat-layers",
        default=None,
        choices=["none", "full", "dots"],
        help="T5Config.remat_policy: rematerialise every layer in the backward pass",
    )
    parser.add_argument("--no-donate", dest="donate", action="store_false")
    parser.add_argument(
        "--prng-impl",
        default=None,
        choices=["threefry2x32", "rbg", "unsafe_rbg"],
        help="jax_default_prng_impl (dropout masks); default jax's threefry2x32",
    )
    parser.add_argument(
        "--xla-flags",
        default=DEFAULT_XLA_FLAGS,
        help='XLA_FLAGS for our runs, e.g. --xla-flags="--xla_cpu_use_onednn=true"',
    )
    parser.add_argument("--input-length", type=int, default=128)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--target-length", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--trainable-regex", default="prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0.")
    return args


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every configuration (and PEFT, and the matmul peaks) in subprocesses.

    Args:
      args: the parsed command line.

    Returns:
      `{"runs": [one record per system and configuration], "summary": {...}}`.
    """
    log = lambda message: print(message, file=sys.stderr, flush=True)
    matmul_spec = {
        "backends": ["jax", "torch"] if args.vs_peft else ["jax"],
        "dtypes": sorted({args.dtype, "float32"}),
        "matmul_size": args.matmul_size,
        "matmul_repeats": args.matmul_repeats,
    }
    log(f"matmul peaks ({args.matmul_size}^2, XLA_FLAGS={args.xla_flags!r}) ...")
    matmul = _spawn("matmul", matmul_spec, args.xla_flags, args.timeout)["matmul"]
    runs = []
    for size in args.config:
        for batch in args.batch:
            spec = {
                "size": size,
                "batch": batch,
                **{k: getattr(args, k) for k in ("input_length", "prompt_length")},
                **{k: getattr(args, k) for k in ("target_length", "dropout", "dtype", "seed")},
                **{k: getattr(args, k) for k in ("frozen_dtype", "donate", "warmup")},
                "prng_impl": args.prng_impl,
                "remat_layers": args.remat_layers,
                "steps": args.steps,
                "trainable_regex": args.trainable_regex,
            }
            log(f"ours: {size}, batch {batch} ...")
            raw = _spawn("jax", spec, args.xla_flags, args.timeout)
            runs.append(_summarize("ours", spec, raw, _peak(matmul, "jax", args.dtype)))
            runs[-1]["xla_flags"] = args.xla_flags
            log(f"  {runs[-1]['step_s_median']:.3f} s/step, load {raw['load_avg_1m']}")
            if args.vs_peft:
                log(f"peft: {size}, batch {batch} ...")
                raw = _spawn("peft", spec, "", args.timeout)
                runs.append(_summarize("peft", spec, raw, _peak(matmul, "torch", "float32")))
                log(f"  {runs[-1]['step_s_median']:.3f} s/step, load {raw['load_avg_1m']}")
    summary = {
        "machine": _machine(),
        "xla_flags": args.xla_flags,
        "matmul_peaks_gflops": matmul,
        "setting": {
            "input_length": args.input_length,
            "prompt_length": args.prompt_length,
            "target_length": args.target_length,
            "dropout": args.dropout,
            "steps": args.steps,
            "warmup": args.warmup,
        },
        "comparisons": _comparisons(runs),
        "notes": [PEFT_NOTE] if args.vs_peft else [],
    }
    return {"runs": runs, "summary": summary}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: a worker (internal `--worker`) or the whole benchmark."""
    args = _parse(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))), flush=True)
        return
    print(json.dumps(run_benchmark(args), indent=1))


if __name__ == "__main__":
    main()
