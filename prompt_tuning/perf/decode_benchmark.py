"""The decoding benchmark: our greedy decoding and rank classification against HF PEFT's.

The logic of `tools/benchmark_decode.py` (its docstring describes the setting and the output).
`run_benchmark` writes each size's random prompted model once in both formats (the `weights`
worker), then, for every round, size, task and precision, runs ours and every PEFT mode of that
precision one after another, each in its own subprocess (`train_benchmark.spawn` running
`decode_workers`); `record` turns a worker's raw result into a JSON record, `agreement` compares
the outputs of ours and PEFT's on the same weights, `comparisons` sets ours against the fastest
PEFT mode of the same task, size and precision, `goals` checks the issue's 2x, `markdown` prints
the table.

PEFT modes: "eager" (float32), "autocast" (bfloat16 autocast around float32 weights), "cast"
(the model cast to bfloat16 with `.to`), and "compile", "compile-autocast", "compile-cast": the
same under `torch.compile` (inductor; the compiling first call is timed apart). Compiled modes
run for rank classification only. `generate` was not compiled: a compiled decoder step needs
transformers' static KV cache (`cache_implementation="static"`) and graphs for the prefill and
the one-token step; PEFT's prompted `generate` with a static cache was not tried in the time
this work had, and eager `generate` (dynamic cache) is what PEFT users run by default.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from prompt_tuning.perf import costs, train_benchmark
from prompt_tuning.perf.workers import model_config

MODULE = "prompt_tuning.perf.decode_workers"
TASKS = ("greedy", "rank")
PEFT_MODES = {
    "float32": ("eager", "compile"),
    "bfloat16": ("autocast", "cast", "compile-autocast", "compile-cast"),
}
ALL_PEFT_MODES = tuple(m for modes in PEFT_MODES.values() for m in modes)
SPEED_GOAL = 2.0
_DROP = ("tokens", "scores", "choices", "losses")  # outputs compared by `agreement`, not kept


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """The benchmark's settings (`tools/benchmark_decode.py`'s flags, same names and defaults).

    Attributes:
      cases: model sizes ("tiny", "small", "base", "large").
      batch: B, examples per batch.
      dtypes: precisions ("float32", "bfloat16").
      tasks: "greedy" (decoding) and/or "rank" (rank classification).
      peft_modes: the PEFT modes to run (each runs at its own precision, see `PEFT_MODES`).
      device: "cpu" or "cuda".
      new_tokens: N, greedy tokens generated per row (exactly).
      input_length: T, input tokens.
      prompt_length: P, prompt tokens.
      num_labels: C, label strings of rank classification.
      label_length: S, tokens per label string (EOS included).
      rounds: alternating rounds (medians over them).
      steps: timed batches (median reported).
      warmup: untimed batches after compiling.
      host_malloc: glibc malloc of every worker ("auto", "reuse" or "system").
      seed: random seed (weights, inputs, labels).
      timeout: seconds per worker.
    """

    cases: Sequence[str] = ("small", "base")
    batch: int = 32
    dtypes: Sequence[str] = ("float32", "bfloat16")
    tasks: Sequence[str] = TASKS
    peft_modes: Sequence[str] = ALL_PEFT_MODES
    device: str = "cpu"
    new_tokens: int = 16
    input_length: int = 128
    prompt_length: int = 100
    num_labels: int = 2
    label_length: int = 3
    rounds: int = 1
    steps: int = 5
    warmup: int = 2
    host_malloc: str = "auto"
    seed: int = 0
    timeout: float = 3600


def peft_modes_for(args: DecodeSettings, task: str, dtype: str) -> list[str]:
    """The PEFT modes run for a task at a precision (compiled ones for rank only)."""
    modes = [m for m in PEFT_MODES[dtype] if m in args.peft_modes]
    return [m for m in modes if task == "rank" or not m.startswith("compile")]


def base_spec(args: DecodeSettings, size: str, weights: str) -> dict[str, Any]:
    """What every worker of a size gets (the HF config is computed here, not in the worker)."""
    from prompt_tuning.t5 import hf_format  # noqa: PLC0415

    keys = ("batch", "new_tokens", "input_length", "prompt_length", "num_labels")
    keys += ("label_length", "steps", "warmup", "host_malloc", "seed", "device")
    spec = {k: getattr(args, k) for k in keys}
    hf_config = hf_format.config_to_hf(model_config(size, 0.0))
    return spec | {"size": size, "weights": weights, "hf_config": hf_config}


def batch_gflop(spec: Mapping[str, Any]) -> float:
    """Matmul GFLOP of our program for one batch (`costs.greedy_flops` / `costs.score_flops`):
    the work either system must do at least (PEFT's rank scoring re-encodes each input per label
    row, so it does more)."""
    config = model_config(spec["size"], 0.0)
    shape = (config, spec["batch"], spec["input_length"], spec["prompt_length"])
    if spec["task"] == "greedy":
        flops = costs.greedy_flops(*shape, spec["new_tokens"])
    else:
        flops = costs.score_flops(*shape, spec["num_labels"], spec["label_length"])
    return flops["total"] / 1e9


def record(system: str, spec: Mapping[str, Any], raw: Mapping[str, Any], rnd: int) -> dict:
    """One run's JSON record from a worker's raw result (outputs dropped)."""
    median = statistics.median(raw["times_s"])
    out = {
        "system": system,
        "mode": spec.get("mode", "ours"),
        "round": rnd,
        **{k: spec[k] for k in ("task", "size", "batch", "dtype", "device")},
        "batch_s_median": median,
        "examples_per_s": spec["batch"] / median,
        "gflop_per_batch": batch_gflop(spec),
        "cpu_s_per_batch_median": statistics.median(raw["cpu_s"]),
    }
    if "new_tokens" in raw:
        out["new_tokens_min_max"] = [min(raw["new_tokens"]), max(raw["new_tokens"])]
    return out | {k: v for k, v in raw.items() if k not in out and k not in _DROP}


def agreement(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, float]:
    """Ours vs PEFT on the same weights and batch: equal greedy tokens (fraction of all `[B, N]`)
    or equal rank-classification choices (fraction of rows) and the largest score difference."""
    if "tokens" in ours:
        pairs = [
            (a, b)
            for r, s in zip(ours["tokens"], theirs["tokens"], strict=True)
            for a, b in zip(r, s)
        ]
        return {"token_equality": sum(a == b for a, b in pairs) / len(pairs)}
    equal = [a == b for a, b in zip(ours["choices"], theirs["choices"], strict=True)]
    diffs = [abs(a - b) for r, s in zip(ours["scores"], theirs["scores"]) for a, b in zip(r, s)]
    return {"choice_agreement": sum(equal) / len(equal), "score_max_abs_diff": max(diffs)}


def comparisons(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ours vs the fastest PEFT mode of the same task, size, batch and precision.

    Medians over rounds per system and mode; `speedup` is our examples/s over the fastest PEFT
    mode's (> 1: we are faster), `cpu_speedup` the same in CPU seconds (all threads; less
    sensitive to other processes on a shared machine); `peft_modes_s` records every mode's
    seconds per batch; `gflop` is our program's matmul work per batch and `ours_gflop_per_s` its
    rate (set it against the machine's matmul peak: at the peak, `gflop` alone takes `gflop /
    peak` seconds, whoever runs it).
    """
    groups: dict[tuple, dict[str, list[float]]] = {}
    memory: dict[tuple, dict[str, list[float]]] = {}
    cpu: dict[tuple, dict[str, list[float]]] = {}
    gflop: dict[tuple, float] = {}
    for run in runs:
        key = (run["task"], run["size"], run["batch"], run["dtype"])
        gflop[key] = run["gflop_per_batch"]
        name = "ours" if run["system"] == "ours" else run["mode"]
        groups.setdefault(key, {}).setdefault(name, []).append(run["batch_s_median"])
        memory.setdefault(key, {}).setdefault(name, []).append(run["peak_rss_gib"])
        cpu.setdefault(key, {}).setdefault(name, []).append(run["cpu_s_per_batch_median"])
    out = []
    for (task, size, batch, dtype), by_mode in groups.items():
        if "ours" not in by_mode:
            continue
        medians = {name: statistics.median(times) for name, times in by_mode.items()}
        ours_s = medians.pop("ours")
        row = {"task": task, "size": size, "batch": batch, "dtype": dtype}
        row |= {"ours_s": ours_s, "ours_examples_per_s": batch / ours_s, "peft_modes_s": medians}
        row |= {"gflop": gflop[task, size, batch, dtype]}
        row["ours_gflop_per_s"] = row["gflop"] / ours_s
        row["ours_peak_rss_gib"] = statistics.median(memory[task, size, batch, dtype]["ours"])
        row["ours_cpu_s"] = statistics.median(cpu[task, size, batch, dtype]["ours"])
        if medians:
            fastest = min(medians, key=medians.get)
            row |= {"peft_fastest_mode": fastest, "peft_s": medians[fastest]}
            row["peft_examples_per_s"] = batch / medians[fastest]
            row["speedup"] = medians[fastest] / ours_s
            row["peft_cpu_s"] = statistics.median(cpu[task, size, batch, dtype][fastest])
            row["cpu_speedup"] = row["peft_cpu_s"] / row["ours_cpu_s"]
            peft_rss = statistics.median(memory[task, size, batch, dtype][fastest])
            row["memory_ratio"] = row["ours_peak_rss_gib"] / peft_rss
        out.append(row)
    return out


def goals(rows: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """The issue's goal per comparison row: >= 2x the fastest PEFT mode in examples/s."""
    return {
        f"{r['task']} {r['size']}:{r['batch']} {r['dtype']}": r["speedup"] >= SPEED_GOAL
        for r in rows
        if "speedup" in r
    }


def markdown(rows: Sequence[Mapping[str, Any]], agreements: Sequence[Mapping[str, Any]]) -> str:
    """The table: one row per task, size and precision (agreement: its lowest over PEFT modes)."""
    agree: dict[tuple, list[float]] = {}
    for a in agreements:
        value = a.get("token_equality", a.get("choice_agreement"))
        agree.setdefault((a["task"], a["size"], a["dtype"]), []).append(value)
    lines = [
        "| task | case | precision | ours s/batch (ex/s; CPU s) | GFLOP/batch (ours GFLOP/s) | "
        "fastest PEFT mode | PEFT s/batch (ex/s; CPU s) | speed-up (CPU) | memory ratio | "
        "agreement (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["task"], f"{r['size']}:{r['batch']}", r["dtype"]]
        cells.append(f"{r['ours_s']:.3f} ({r['ours_examples_per_s']:.1f}; {r['ours_cpu_s']:.2f})")
        cells.append(f"{r['gflop']:.1f} ({r['ours_gflop_per_s']:.0f})")
        if "speedup" in r:
            cells.append(r["peft_fastest_mode"])
            cells.append(
                f"{r['peft_s']:.3f} ({r['peft_examples_per_s']:.1f}; {r['peft_cpu_s']:.2f})"
            )
            cells.append(f"{r['speedup']:.2f}x ({r['cpu_speedup']:.2f}x)")
            cells.append(f"{r['memory_ratio']:.2f}")
        else:
            cells += ["-"] * 4
        values = agree.get((r["task"], r["size"], r["dtype"]))
        cells.append(f"{min(values):.3f}" if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run_case(args: DecodeSettings, spec: dict, rnd: int, log: Any) -> tuple[list, list]:
    """Ours then every PEFT mode of one task, size and precision: records and agreements."""
    runs, agreements = [], []
    ours_raw = None
    systems = [("jax", None)] + [
        ("peft", m) for m in peft_modes_for(args, spec["task"], spec["dtype"])
    ]
    for kind, mode in systems:
        run_spec = dict(spec, mode=mode) if mode else spec
        name = "ours" if kind == "jax" else f"peft/{mode}"
        log(f"round {rnd + 1}: {name} {spec['task']} {spec['size']} {spec['dtype']} ...")
        # JAX_PLATFORMS also for PEFT's worker (torch ignores it): host malloc's `auto` then
        # chooses the same for both systems.
        raw = train_benchmark.spawn(
            kind, run_spec, "", args.timeout, module=MODULE, platform=args.device
        )
        public = {k: v for k, v in run_spec.items() if k != "hf_config"}
        runs.append(record("ours" if kind == "jax" else "peft", public, raw, rnd))
        log(f"  {statistics.median(raw['times_s']):.3f} s/batch, load {raw['load_avg_1m']}")
        if min(raw.get("new_tokens", [spec["new_tokens"]])) < spec["new_tokens"]:
            log(f"  WARNING: rows stopped before {spec['new_tokens']} tokens: {raw['new_tokens']}")
        if kind == "jax":
            ours_raw = raw
        elif ours_raw is not None:
            found = agreement(ours_raw, raw)
            agreements.append(
                {k: spec[k] for k in ("task", "size", "dtype")}
                | {"peft_mode": mode, "round": rnd}
                | found
            )
    return runs, agreements


def run_benchmark(args: DecodeSettings) -> dict[str, Any]:
    """Runs every case (see the module docstring); returns `{"runs": [...], "summary": {...}}`
    and prints the Markdown table on stderr."""

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    folder = tempfile.mkdtemp(prefix="decode_benchmark_")
    try:
        weights = {}
        for size in args.cases:
            log(f"writing the random {size} model in both formats ...")
            path = os.path.join(folder, size)
            spec = {"size": size, "prompt_length": args.prompt_length, "seed": args.seed}
            spec |= {"path": path, "host_malloc": args.host_malloc}
            train_benchmark.spawn("weights", spec, "", args.timeout, module=MODULE)
            weights[size] = path
        runs, agreements = [], []
        for rnd in range(args.rounds):
            for size in args.cases:
                for task in args.tasks:
                    for dtype in args.dtypes:
                        spec = base_spec(args, size, weights[size]) | {"task": task, "dtype": dtype}
                        found = _run_case(args, spec, rnd, log)
                        runs += found[0]
                        agreements += found[1]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = comparisons(runs)
    setting = {k: v for k, v in dataclasses.asdict(args).items() if k not in ("cases", "timeout")}
    summary = {
        "machine": train_benchmark.machine(),
        "setting": setting,
        "comparisons": rows,
        "agreement": agreements,
        "goals": goals(rows),
        "notes": [
            "Same weights in both systems (EOS's output column zeroed so that every row decodes "
            "exactly new_tokens tokens); PEFT with an encoder-only prompt.",
        ],
    }
    log("\n" + markdown(rows, agreements))
    return {"runs": runs, "summary": summary}
