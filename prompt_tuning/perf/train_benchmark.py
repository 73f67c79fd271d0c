"""The training-step benchmark: our prompt-tuning step against HF PEFT, both precisions.

The logic of `tools/benchmark_train.py` (its docstring describes the setting and the output):
`run_benchmark` runs every case's systems one after another, alternating, each in its own
subprocess (`spawn`, running `workers`), then turns the workers' raw results into records
(`record`), compares ours with PEFT's fastest mode at the same precision (`comparisons`), checks
the goals (`goals`) and prints the Markdown table (`markdown`) on stderr; those three live in
`train_report` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from prompt_tuning.parallel import host_memory
from prompt_tuning.perf import benchmark
from prompt_tuning.perf.train_report import comparisons, goals, markdown
from prompt_tuning.perf.workers import model_config

__all__ = ["comparisons", "goals", "markdown", "run_benchmark", "spawn", "specs"]

DEFAULT_CASES = ("small:8", "small:32", "base:8")
PEFT_NOTE = (
    "PEFT timed with the installed torch/transformers/peft (each run's `versions`; transformers "
    "4.x keeps T5 1.1's lm_head untied as here, 5.x ties it: the same compute), AdamW, an "
    "encoder-only prompt (num_transformer_submodules=1). Ours is compared with the fastest PEFT "
    "mode of the same precision in the same run (`peft_mode`; every mode in `peft_modes_step_s`), "
    "memory with that same mode's."
)
# PEFT's modes, `dtype-mode`: "bfloat16" is autocast; "compiled" is torch.compile (inductor).
PEFT_MODES = ("float32-eager", "float32-compiled", "bfloat16-eager", "bfloat16-compiled")
# Nominal dense bfloat16 peak of H100/H200 SXM (TFLOP/s): `--peak-tflops`'s default on cuda.
CUDA_PEAK_TFLOPS = 989.0
DEFAULT_MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}


@dataclasses.dataclass(frozen=True)
class BenchmarkSettings:
    """The benchmark's settings (`tools/benchmark_train.py`'s flags, same names and defaults).

    Attributes:
      cases: `size:batch` cases, e.g. "small:8".
      dtypes: activation dtypes ("float32", "bfloat16") of ours and PEFT.
      rounds: alternating rounds (medians over them).
      steps: timed steps (median reported).
      warmup: untimed steps after compiling.
      vs_peft: also time HF PEFT (torch).
      frozen_dtype: FROZEN_DTYPE of ours; "auto": the activation dtype.
      remat_layers: `T5Config.remat_policy` settings of ours (each one a run).
      donate: donate the state to our step.
      prng_impl: `jax_default_prng_impl` of ours (None: jax's).
      xla_flags: XLA_FLAGS of our runs.
      host_malloc: glibc malloc of every worker ("auto", "reuse", "system": `parallel.host_memory`).
      profile: profile one step of ours.
      input_length: T, input tokens.
      prompt_length: P, prompt tokens.
      target_length: S, target tokens.
      dropout: dropout rate.
      trainable_regex: the trainable-parameter regex of ours.
      seed: random seed.
      matmul_size: n of the square-matmul peaks (None: 2048 on cpu, 8192 on cuda).
      timeout: seconds per worker.
      peft_modes: PEFT's modes (`PEFT_MODES`); None: every mode of `dtypes`.
      device: "cpu" or "cuda" (ours with JAX_PLATFORMS=cuda, PEFT on torch's cuda device).
      peak_tflops: a nominal bfloat16 peak for MFU (None: `CUDA_PEAK_TFLOPS` on cuda, none on
        cpu), reported beside the MFU against the measured bfloat16 matmul peak.
    """

    cases: Sequence[str] = DEFAULT_CASES
    dtypes: Sequence[str] = ("float32", "bfloat16")
    rounds: int = 1
    steps: int = 5
    warmup: int = 2
    vs_peft: bool = False
    frozen_dtype: str = "auto"
    remat_layers: Sequence[str] = ("none",)
    donate: bool = True
    prng_impl: str | None = None
    xla_flags: str = ""
    host_malloc: str = "auto"
    profile: bool = False
    input_length: int = 128
    prompt_length: int = 100
    target_length: int = 8
    dropout: float = 0.1
    trainable_regex: str = "prompt"
    seed: int = 0
    matmul_size: int | None = None
    timeout: float = 3600
    peft_modes: Sequence[str] | None = None
    device: str = "cpu"
    peak_tflops: float | None = None

    def modes(self) -> list[str]:
        """The PEFT modes to run (`peft_modes`, or every mode of `dtypes`), in `PEFT_MODES` order.

        Raises:
          ValueError: an unknown mode, or one whose precision is not in `dtypes`.
        """
        modes = [m for m in PEFT_MODES if m.split("-")[0] in self.dtypes]
        if self.peft_modes is None:
            return modes
        for mode in self.peft_modes:
            if mode not in modes:
                raise ValueError(
                    f"--peft-modes {mode!r} is not one of {modes} (the modes of --dtypes "
                    f"{' '.join(self.dtypes)}); add its precision to --dtypes or drop it."
                )
        return [m for m in modes if m in self.peft_modes]

    def nominal_peak_gflops(self) -> float | None:
        """`peak_tflops` (or the cuda default) in GFLOP/s; None on cpu without one."""
        tflops = self.peak_tflops or (CUDA_PEAK_TFLOPS if self.device == "cuda" else None)
        return tflops * 1e3 if tflops else None

    def matmul_n(self) -> int:
        """n of the square-matmul peaks."""
        return self.matmul_size or DEFAULT_MATMUL_SIZE[self.device]


def spawn(
    kind: str,
    spec: Mapping[str, Any],
    xla_flags: str,
    timeout: float,
    module: str = "prompt_tuning.perf.workers",
    platform: str = "cpu",
) -> dict[str, Any]:
    """Runs one worker in a fresh interpreter with the given XLA_FLAGS; returns its JSON result.

    Args:
      kind: the worker's name in `module`'s table (its first command-line argument).
      spec: the worker's JSON-able settings (its second argument); `spec["host_malloc"]` sets
        glibc malloc (`parallel.host_memory`).
      xla_flags: XLA_FLAGS of the worker.
      timeout: seconds before the worker is killed.
      module: the worker module, run as `python -m module kind spec`.
      platform: JAX_PLATFORMS of the worker ("cpu", "cuda").

    Raises:
      RuntimeError: the worker failed or printed no JSON (its stderr tail is included).
    """
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS=platform, USE_TF="0")
    env[host_memory.ENV_VAR] = spec["host_malloc"]
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = str(pathlib.Path(__file__).resolve().parents[2])  # this library's parent folder
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # A worker still running near its timeout prints its threads' stacks (then every minute).
    env[benchmark.STACKS_AFTER_ENV] = str(max(timeout - 30, 0.8 * timeout))
    command = [sys.executable, "-m", module, kind]
    load_before = os.getloadavg()[0]
    try:
        done = subprocess.run(
            command + [json.dumps(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr or ""  # bytes: TimeoutExpired keeps the raw capture
        stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        how = f"ran past its {timeout:g} s (--timeout) and was killed"
        raise RuntimeError(_worker_failure(kind, spec, how, stderr)) from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        how = f"failed (exit {done.returncode})"
        raise RuntimeError(_worker_failure(kind, spec, how, done.stderr))
    result = json.loads(lines[-1])
    result["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def _worker_failure(kind: str, spec: Mapping[str, Any], how: str, stderr: str) -> str:
    """The error message of a failed worker: what happened, the stages it reached
    (`benchmark.stage` lines) and its stderr's tail (a traceback, or the thread stacks it
    printed before its timeout)."""
    stages = "\n".join(line for line in stderr.splitlines() if line.startswith("[worker +"))
    return (
        f"The {kind} benchmark worker {how} for {dict(spec)}. Its progress:\n{stages}\n"
        f"Its stderr ends with:\n{stderr[-6000:]}"
    )


def record(
    system: str,
    spec: Mapping[str, Any],
    raw: Mapping[str, Any],
    peak: float | None,
    rnd: int,
    bf16_peak: float | None = None,
    nominal_peak: float | None = None,
) -> dict[str, Any]:
    """One run's JSON record from a worker's raw result.

    Args:
      system: "ours" or "peft".
      spec: the worker's spec (without `hf_config`).
      raw: the worker's result.
      peak: the measured matmul peak (GFLOP/s) of the run's backend and precision.
      rnd: the round.
      bf16_peak: the measured bfloat16 matmul peak (GFLOP/s, best backend): MFU's denominator.
      nominal_peak: a nominal bfloat16 peak (GFLOP/s, `--peak-tflops`): a second MFU.
    """
    from prompt_tuning.perf import costs  # noqa: PLC0415

    config = model_config(spec["size"], spec["dropout"])
    lengths = (spec["input_length"], spec["prompt_length"], spec["target_length"])
    flops = costs.step_flops(config, spec["batch"], *lengths)["step"]
    median = statistics.median(raw["times_s"])
    achieved = flops / median / 1e9
    keys = ("size", "batch", "dtype", "frozen_dtype", "remat_layers", "peft_mode")
    record = {
        "system": system,
        "round": rnd,
        **{k: spec.get(k) for k in keys},
        "device": spec.get("device", "cpu"),
        "step_s_median": median,
        "cpu_s_per_step_median": statistics.median(raw["cpu_s"]),
        "examples_per_s": spec["batch"] / median,
        "tokens_per_s": spec["batch"] * (spec["input_length"] + spec["target_length"]) / median,
        "flops_per_step": flops,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
        "fraction_of_matmul_peak": achieved / peak if peak else None,
        "mfu_measured_bf16_peak": achieved / bf16_peak if bf16_peak else None,
        "mfu_nominal": achieved / nominal_peak if nominal_peak else None,
    }
    return record | {k: v for k, v in raw.items() if k not in record}


def machine() -> dict[str, Any]:
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


def specs(args: BenchmarkSettings, size: str, batch: int) -> list[tuple[str, dict[str, Any]]]:
    """The runs of one case in their alternating order: (worker, spec).

    Per precision: ours, then each PEFT mode of that precision (`args.modes()`: eager, then
    compiled); then ours with the other `remat_layers` settings.
    """
    from prompt_tuning.t5 import hf_format  # noqa: PLC0415

    base = {
        "size": size,
        "batch": batch,
        **{k: getattr(args, k) for k in ("input_length", "prompt_length", "target_length")},
        **{k: getattr(args, k) for k in ("dropout", "seed", "warmup", "steps", "donate")},
        "trainable_regex": args.trainable_regex,
        "prng_impl": args.prng_impl,
        "profile": args.profile,
        "host_malloc": args.host_malloc,
        "device": args.device,
    }
    hf_config = hf_format.config_to_hf(model_config(size, args.dropout))
    modes = args.modes() if args.vs_peft else []
    out = []
    for remat in args.remat_layers:
        for dtype in args.dtypes:
            frozen = dtype if args.frozen_dtype == "auto" else args.frozen_dtype
            ours = dict(base, dtype=dtype, frozen_dtype=frozen, remat_layers=remat)
            out.append(("jax", ours))
            if remat != args.remat_layers[0]:
                continue
            for mode in modes:
                precision, _, compiled = mode.partition("-")
                if precision == dtype:
                    peft = dict(base, dtype=dtype, hf_config=hf_config, peft_mode=compiled)
                    out.append(("peft", peft))
    return out


def _matmul_peaks(args: BenchmarkSettings) -> list[dict[str, Any]]:
    """Square-matmul GFLOP/s of jax (and torch) in the benchmarked dtypes (and bfloat16, MFU's
    reference), in a subprocess on `args.device`."""
    spec = {
        "backends": ["jax", "torch"] if args.vs_peft else ["jax"],
        "dtypes": sorted({*args.dtypes, "bfloat16"}, reverse=True),
        "n": args.matmul_n(),
        "host_malloc": args.host_malloc,
        "device": args.device,
    }
    return spawn("matmul", spec, args.xla_flags, args.timeout, platform=args.device)["matmul"]


def _best_peak(peaks: Sequence[Mapping[str, Any]], backend: str | None, dtype: str) -> float | None:
    """The best measured GFLOP/s of `backend` (None: any) in `dtype`."""
    found = [
        p["gflops"]
        for p in peaks
        if (backend is None or p["backend"] == backend) and p["dtype"] == dtype
    ]
    return max(found) if found else None


def _log_run(log: Any, raw: Mapping[str, Any]) -> None:
    """One run's line on stderr (and its profile, with --profile)."""
    from prompt_tuning.perf import profiling  # noqa: PLC0415

    device = f", GPU {raw['device_peak_gib']:.2f} GiB" if raw.get("device_peak_gib") else ""
    build = f", build {raw['build_s']:.1f} s" if raw.get("build_s") else ""
    compile_s = f", compile {raw['compile_s']:.1f} s" if raw.get("compile_s") else ""
    log(
        f"  {statistics.median(raw['times_s']):.3f} s/step, {raw['peak_rss_gib']:.2f} GiB"
        f"{device}{build}{compile_s}, load {raw['load_avg_1m']}"
    )
    if "profile" in raw:  # --profile: where one step's time goes, by category
        wall = statistics.median(raw["times_s"])
        log("\n".join(profiling.format_profile(raw["profile"], wall)))


def run_benchmark(args: BenchmarkSettings) -> dict[str, Any]:
    """Runs every case's systems in alternating subprocesses, `--rounds` times.

    Returns:
      `{"runs": [one record per run], "summary": {...}}`.

    Raises:
      ValueError: `--peft-modes` names a mode outside `--dtypes`.
    """
    args.modes()  # bad --peft-modes fail before anything runs
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    log(f"matmul peaks ({args.matmul_n()}^2, {args.device}) ...")
    peaks = _matmul_peaks(args)
    raw_runs = []
    for rnd in range(args.rounds):
        for case in args.cases:
            size, _, batch = case.partition(":")
            for kind, spec in specs(args, size, int(batch)):
                name = "ours" if kind == "jax" else "peft"
                mode = f" {spec['peft_mode']}" if kind == "peft" else ""
                log(f"round {rnd + 1}: {name}{mode} {size} b{batch} {spec['dtype']} ...")
                flags = args.xla_flags if kind == "jax" else ""
                raw = spawn(kind, spec, flags, args.timeout, platform=args.device)
                raw_runs.append((name, spec, raw, rnd))
                _log_run(log, raw)
    log("matmul peaks again ...")
    peaks += _matmul_peaks(args)
    runs = []
    bf16_peak, nominal = _best_peak(peaks, None, "bfloat16"), args.nominal_peak_gflops()
    for name, spec, raw, rnd in raw_runs:
        backend = "jax" if name == "ours" else "torch"
        spec = {k: v for k, v in spec.items() if k != "hf_config"}
        if name == "peft":  # the mode's full name, as in --peft-modes
            spec["peft_mode"] = f"{spec['dtype']}-{spec['peft_mode']}"
        peak = _best_peak(peaks, backend, spec["dtype"])
        runs.append(record(name, spec, raw, peak, rnd, bf16_peak, nominal))
    rows = comparisons(runs)
    settings = ("input_length", "prompt_length", "target_length", "dropout", "steps", "warmup")
    settings += ("rounds", "host_malloc", "prng_impl", "device", "peft_modes")
    summary = {
        "machine": machine(),
        "xla_flags": args.xla_flags,
        "matmul_peaks_gflops": peaks,
        "nominal_peak_gflops": nominal,
        "setting": {k: getattr(args, k) for k in settings} | {"peft_modes": args.modes()},
        "comparisons": rows,
        "goals": goals(rows),
        "notes": [PEFT_NOTE] if args.vs_peft else [],
    }
    log("\n" + markdown(rows))
    return {"runs": runs, "summary": summary}
