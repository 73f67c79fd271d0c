"""The training-step benchmark: our prompt-tuning step against HF PEFT, both precisions.

The logic of `tools/benchmark_train.py` (its docstring describes the setting and the output):
`run_benchmark` runs every case's systems one after another, alternating, each in its own
subprocess (`spawn`, running `workers`), then turns the workers' raw results into records
(`record`), compares ours with PEFT at the same precision (`comparisons`), checks the goals
(`goals`) and prints the Markdown table (`markdown`) on stderr.
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
from prompt_tuning.perf.workers import model_config

DEFAULT_CASES = ("small:8", "small:32", "base:8")
PEFT_NOTE = (
    "PEFT timed with the installed transformers (4.57: T5 1.1's lm_head is untied, as here), "
    "AdamW, an encoder-only prompt (num_transformer_submodules=1)."
)
SPEED_GOAL, PEAK_GOAL, MEMORY_GOAL = 1.5, 0.7, 0.5


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
      host_malloc: glibc malloc of every worker ("reuse" or "system"; `parallel.host_memory`).
      profile: profile one step of ours.
      input_length: T, input tokens.
      prompt_length: P, prompt tokens.
      target_length: S, target tokens.
      dropout: dropout rate.
      trainable_regex: the trainable-parameter regex of ours.
      seed: random seed.
      matmul_size: n of the square-matmul peaks.
      timeout: seconds per worker.
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
    host_malloc: str = "reuse"
    profile: bool = False
    input_length: int = 128
    prompt_length: int = 100
    target_length: int = 8
    dropout: float = 0.1
    trainable_regex: str = "prompt"
    seed: int = 0
    matmul_size: int = 2048
    timeout: float = 3600


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
    command = [sys.executable, "-m", module, kind]
    load_before = os.getloadavg()[0]
    done = subprocess.run(
        command + [json.dumps(spec)],
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


def record(
    system: str, spec: Mapping[str, Any], raw: Mapping[str, Any], peak: float | None, rnd: int
) -> dict[str, Any]:
    """One run's JSON record from a worker's raw result."""
    from prompt_tuning.perf import costs  # noqa: PLC0415

    config = model_config(spec["size"], spec["dropout"])
    lengths = (spec["input_length"], spec["prompt_length"], spec["target_length"])
    flops = costs.step_flops(config, spec["batch"], *lengths)["step"]
    median = statistics.median(raw["times_s"])
    achieved = flops / median / 1e9
    record = {
        "system": system,
        "round": rnd,
        **{k: spec.get(k) for k in ("size", "batch", "dtype", "frozen_dtype", "remat_layers")},
        "step_s_median": median,
        "cpu_s_per_step_median": statistics.median(raw["cpu_s"]),
        "examples_per_s": spec["batch"] / median,
        "tokens_per_s": spec["batch"] * (spec["input_length"] + spec["target_length"]) / median,
        "flops_per_step": flops,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
        "fraction_of_matmul_peak": achieved / peak if peak else None,
    }
    return record | {k: v for k, v in raw.items() if k not in record}


def _median_of(runs: Sequence[Mapping[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def comparisons(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ours (each setting) vs PEFT at the same case and precision, medians over rounds.

    `speedup` and `cpu_speedup` are PEFT's wall / CPU seconds per step over ours (> 1: we are
    faster); `memory_ratio` is our peak RSS over PEFT's (< 1: we use less).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for run in runs:
        setting = None if run["system"] == "peft" else (run["frozen_dtype"], run["remat_layers"])
        key = (run["system"], run["size"], run["batch"], run["dtype"], setting)
        groups.setdefault(key, []).append(run)
    out = []
    for (system, size, batch, dtype, setting), ours in groups.items():
        theirs = groups.get(("peft", size, batch, dtype, None))
        if system != "ours":
            continue
        row = {
            "size": size,
            "batch": batch,
            "dtype": dtype,
            "frozen_dtype": setting[0],
            "remat_layers": setting[1],
            "rounds": len(ours),
            "ours_step_s": _median_of(ours, "step_s_median"),
            "ours_cpu_s": _median_of(ours, "cpu_s_per_step_median"),
            "ours_peak_rss_gib": _median_of(ours, "peak_rss_gib"),
            "ours_fraction_of_matmul_peak": _median_of(ours, "fraction_of_matmul_peak"),
            "load_avg_1m": [r["load_avg_1m"] for r in ours],
        }
        if theirs:
            row |= {
                "peft_step_s": _median_of(theirs, "step_s_median"),
                "peft_cpu_s": _median_of(theirs, "cpu_s_per_step_median"),
                "peft_peak_rss_gib": _median_of(theirs, "peak_rss_gib"),
            }
            row["speedup"] = row["peft_step_s"] / row["ours_step_s"]
            row["cpu_speedup"] = row["peft_cpu_s"] / row["ours_cpu_s"]
            row["memory_ratio"] = row["ours_peak_rss_gib"] / row["peft_peak_rss_gib"]
        out.append(row)
    return out


def goals(comparisons: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's goals, per comparison row: speed-up, fraction of peak, memory (small b32)."""
    goals = {}
    for row in comparisons:
        name = f"{row['size']}:{row['batch']} {row['dtype']} remat={row['remat_layers']}"
        entry = {"fraction_of_peak": row["ours_fraction_of_matmul_peak"] >= PEAK_GOAL}
        if "speedup" in row:
            entry["speedup"] = row["speedup"] >= SPEED_GOAL
            if (row["size"], row["batch"]) == ("small", 32):
                entry["memory"] = row["memory_ratio"] <= MEMORY_GOAL
        goals[name] = entry
    return goals


def markdown(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """The README's table: one row per case, precision and setting of ours."""
    lines = [
        "| case | precision | ours s/step (CPU s) | PEFT s/step (CPU s) | speed-up | "
        "peak RSS ours / PEFT | ours GFLOP/s share of peak | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in comparisons:
        remat = "" if r["remat_layers"] == "none" else f", remat {r['remat_layers']}"
        peft = f"{r['peft_step_s']:.2f} ({r['peft_cpu_s']:.2f})" if "peft_step_s" in r else "—"
        ratio = f"{r['speedup']:.2f}×" if "speedup" in r else "—"
        memory = f"{r['ours_peak_rss_gib']:.2f} / " + (
            f"{r['peft_peak_rss_gib']:.2f} GiB" if "peft_peak_rss_gib" in r else "—"
        )
        load = max(max(pair) for pair in r["load_avg_1m"])
        lines.append(
            f"| {r['size']} b{r['batch']} | {r['dtype']}{remat} | {r['ours_step_s']:.2f} "
            f"({r['ours_cpu_s']:.2f}) | {peft} | {ratio} | {memory} | "
            f"{r['ours_fraction_of_matmul_peak']:.0%} | ≤ {load:.1f} |"
        )
    return "\n".join(lines)


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
    """The runs of one case in their alternating order: (worker, spec)."""
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
    }
    hf_config = hf_format.config_to_hf(model_config(size, args.dropout))
    out = []
    for remat in args.remat_layers:
        for dtype in args.dtypes:
            frozen = dtype if args.frozen_dtype == "auto" else args.frozen_dtype
            ours = dict(base, dtype=dtype, frozen_dtype=frozen, remat_layers=remat)
            out.append(("jax", ours))
            if args.vs_peft and remat == args.remat_layers[0]:
                out.append(("peft", dict(base, dtype=dtype, hf_config=hf_config)))
    return out


def _matmul_peaks(args: BenchmarkSettings) -> list[dict[str, Any]]:
    """Square-matmul GFLOP/s of jax (and torch) in the benchmarked dtypes, in a subprocess."""
    spec = {
        "backends": ["jax", "torch"] if args.vs_peft else ["jax"],
        "dtypes": list(args.dtypes),
        "n": args.matmul_size,
        "host_malloc": args.host_malloc,
    }
    return spawn("matmul", spec, args.xla_flags, args.timeout)["matmul"]


def _best_peak(peaks: Sequence[Mapping[str, Any]], backend: str, dtype: str) -> float | None:
    found = [p["gflops"] for p in peaks if p["backend"] == backend and p["dtype"] == dtype]
    return max(found) if found else None


def run_benchmark(args: BenchmarkSettings) -> dict[str, Any]:
    """Runs every case's systems in alternating subprocesses, `--rounds` times.

    Returns:
      `{"runs": [one record per run], "summary": {...}}`.
    """
    from prompt_tuning.perf import profiling  # noqa: PLC0415

    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    log(f"matmul peaks ({args.matmul_size}^2) ...")
    peaks = _matmul_peaks(args)
    raw_runs = []
    for rnd in range(args.rounds):
        for case in args.cases:
            size, _, batch = case.partition(":")
            for kind, spec in specs(args, size, int(batch)):
                name = "ours" if kind == "jax" else "peft"
                log(f"round {rnd + 1}: {name} {size} b{batch} {spec['dtype']} ...")
                flags = args.xla_flags if kind == "jax" else ""
                raw = spawn(kind, spec, flags, args.timeout)
                raw_runs.append((name, spec, raw, rnd))
                log(
                    f"  {statistics.median(raw['times_s']):.3f} s/step, "
                    f"{raw['peak_rss_gib']:.2f} GiB, load {raw['load_avg_1m']}"
                )
                if "profile" in raw:  # --profile: where one step's time goes, by category
                    wall = statistics.median(raw["times_s"])
                    log("\n".join(profiling.format_profile(raw["profile"], wall)))
    log("matmul peaks again ...")
    peaks += _matmul_peaks(args)
    runs = []
    for name, spec, raw, rnd in raw_runs:
        backend = "jax" if name == "ours" else "torch"
        spec = {k: v for k, v in spec.items() if k != "hf_config"}
        runs.append(record(name, spec, raw, _best_peak(peaks, backend, spec["dtype"]), rnd))
    rows = comparisons(runs)
    summary = {
        "machine": machine(),
        "xla_flags": args.xla_flags,
        "matmul_peaks_gflops": peaks,
        "setting": {
            k: getattr(args, k)
            for k in (
                "input_length",
                "prompt_length",
                "target_length",
                "dropout",
                "steps",
                "warmup",
                "rounds",
                "host_malloc",
                "prng_impl",
            )
        },
        "comparisons": rows,
        "goals": goals(rows),
        "notes": [PEFT_NOTE] if args.vs_peft else [],
    }
    log("\n" + markdown(rows))
    return {"runs": runs, "summary": summary}
