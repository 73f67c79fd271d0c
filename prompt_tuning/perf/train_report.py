"""The training benchmark's report: ours vs PEFT's fastest mode, the issue's goals, the table.

`comparisons` turns the benchmark's run records (`train_benchmark.record`) into one row per case,
precision and setting of ours, against PEFT's fastest mode of the same case and precision;
`goals` checks the issue's goals on those rows; `markdown` prints them as the README's table.
Pure functions of JSON-able records: no jax or torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# The goals (issue 22). CPU: speed-up over PEFT's fastest mode of the same precision, by
# precision and case; peak RSS at small b32 against that mode's; the bfloat16 step's share of the
# bfloat16 matmul peak at base b8.
SPEED_GOALS = {
    "bfloat16": {("small", 8): 2.0, ("small", 32): 2.0, ("base", 8): 2.0},
    "float32": {("small", 32): 1.5, ("base", 8): 1.5},
}
MEMORY_GOAL, MEMORY_CASE = 0.5, ("small", 32)
PEAK_GOAL, PEAK_CASE = 0.5, ("bfloat16", "base", 8)
# GPU: ahead of PEFT in every case, and MFU (against the nominal bf16 peak) >= 40% at base b32.
GPU_SPEED_GOAL, GPU_MFU_GOAL, GPU_MFU_CASE = 1.0, 0.4, ("bfloat16", "base", 32)


def _median_of(runs: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fastest_peft(modes: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """PEFT's fastest mode (median over rounds per mode, then the minimum) and its figures."""
    steps = {mode: _median_of(runs, "step_s_median") for mode, runs in modes.items()}
    fastest = min(steps, key=steps.get)
    runs = modes[fastest]
    return {
        "peft_mode": fastest,
        "peft_step_s": steps[fastest],
        "peft_cpu_s": _median_of(runs, "cpu_s_per_step_median"),
        "peft_peak_rss_gib": _median_of(runs, "peak_rss_gib"),
        "peft_device_peak_gib": _median_of(runs, "device_peak_gib"),
        "peft_mfu_nominal": _median_of(runs, "mfu_nominal"),
        "peft_modes_step_s": steps,
        "peft_compile_s": {m: _median_of(r, "compile_s") for m, r in modes.items()},
    }


def comparisons(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ours (each setting) vs PEFT's fastest mode at the same case and precision.

    Medians over rounds per system, setting and PEFT mode; PEFT's fastest mode is the one with
    the least median step time among its modes of that case and precision (`peft_mode`; every
    mode's median in `peft_modes_step_s`). `speedup` and `cpu_speedup` are that mode's wall /
    CPU seconds per step over ours (> 1: we are faster); `memory_ratio` is our peak RSS over
    that same mode's (< 1: we use less), `device_memory_ratio` the same for GPU memory.
    """
    ours_groups: dict[tuple, list[Mapping[str, Any]]] = {}
    peft_groups: dict[tuple, dict[str, list[Mapping[str, Any]]]] = {}
    for run in runs:
        case = (run["size"], run["batch"], run["dtype"])
        if run["system"] == "peft":
            mode = run.get("peft_mode") or f"{run['dtype']}-eager"
            peft_groups.setdefault(case, {}).setdefault(mode, []).append(run)
        else:
            key = (*case, run["frozen_dtype"], run["remat_layers"])
            ours_groups.setdefault(key, []).append(run)
    out = []
    for (size, batch, dtype, frozen, remat), ours in ours_groups.items():
        row = {
            "size": size,
            "batch": batch,
            "dtype": dtype,
            "frozen_dtype": frozen,
            "remat_layers": remat,
            "device": ours[0].get("device", "cpu"),
            "rounds": len(ours),
            "ours_step_s": _median_of(ours, "step_s_median"),
            "ours_cpu_s": _median_of(ours, "cpu_s_per_step_median"),
            "ours_peak_rss_gib": _median_of(ours, "peak_rss_gib"),
            "ours_device_peak_gib": _median_of(ours, "device_peak_gib"),
            "ours_fraction_of_matmul_peak": _median_of(ours, "fraction_of_matmul_peak"),
            "ours_mfu_measured_bf16_peak": _median_of(ours, "mfu_measured_bf16_peak"),
            "ours_mfu_nominal": _median_of(ours, "mfu_nominal"),
            "load_avg_1m": [r["load_avg_1m"] for r in ours],
        }
        if (size, batch, dtype) in peft_groups:
            row |= _fastest_peft(peft_groups[(size, batch, dtype)])
            row["speedup"] = row["peft_step_s"] / row["ours_step_s"]
            row["cpu_speedup"] = row["peft_cpu_s"] / row["ours_cpu_s"]
            row["memory_ratio"] = row["ours_peak_rss_gib"] / row["peft_peak_rss_gib"]
            if row["ours_device_peak_gib"] and row["peft_device_peak_gib"]:
                row["device_memory_ratio"] = (
                    row["ours_device_peak_gib"] / row["peft_device_peak_gib"]
                )
        out.append(row)
    return out


def goals(comparisons: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's goals that apply to each comparison row (rows with none are left out).

    CPU: speed-up over PEFT's fastest mode >= `SPEED_GOALS[dtype][case]`; peak RSS <=
    `MEMORY_GOAL` of that mode's at `MEMORY_CASE` (every precision); the bfloat16 step's share of
    the bfloat16 matmul peak >= `PEAK_GOAL` at `PEAK_CASE`. cuda: ahead of PEFT (speed-up >=
    `GPU_SPEED_GOAL`) and MFU against the nominal peak >= `GPU_MFU_GOAL` at `GPU_MFU_CASE`.
    """
    out = {}
    for row in comparisons:
        case, gpu = (row["size"], row["batch"]), row.get("device", "cpu") == "cuda"
        entry = {}
        if gpu and (row["dtype"], *case) == GPU_MFU_CASE and row.get("ours_mfu_nominal"):
            entry["mfu"] = row["ours_mfu_nominal"] >= GPU_MFU_GOAL
        if not gpu and (row["dtype"], *case) == PEAK_CASE:
            entry["fraction_of_peak"] = row["ours_fraction_of_matmul_peak"] >= PEAK_GOAL
        if "speedup" in row:
            threshold = GPU_SPEED_GOAL if gpu else SPEED_GOALS[row["dtype"]].get(case)
            if threshold is not None:
                entry["speedup"] = row["speedup"] >= threshold
            if not gpu and case == MEMORY_CASE:
                entry["memory"] = row["memory_ratio"] <= MEMORY_GOAL
        if entry:
            name = f"{row['size']}:{row['batch']} {row['dtype']} remat={row['remat_layers']}"
            out[f"{name} (cuda)" if gpu else name] = entry
    return out


def _gib(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """The README's table: one row per case, precision and setting of ours.

    PEFT's column is its fastest mode of the same precision (named in "PEFT mode"); on cuda the
    memory column shows GPU peak memory beside RSS, and MFU both against the measured bfloat16
    matmul peak and the nominal one.
    """
    gpu = any(r.get("device") == "cuda" for r in comparisons)
    share = "MFU (measured bf16 peak / nominal)" if gpu else "ours GFLOP/s share of peak"
    memory = "peak RSS; GPU ours / PEFT" if gpu else "peak RSS ours / PEFT"
    lines = [
        f"| case | precision | ours s/step (CPU s) | PEFT mode | PEFT s/step (CPU s) | speed-up | "
        f"{memory} | {share} | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparisons:
        remat = "" if r["remat_layers"] == "none" else f", remat {r['remat_layers']}"
        peft = f"{r['peft_step_s']:.2f} ({r['peft_cpu_s']:.2f})" if "peft_step_s" in r else "—"
        ratio = f"{r['speedup']:.2f}×" if "speedup" in r else "—"
        mem = f"{_gib(r['ours_peak_rss_gib'])} / {_gib(r.get('peft_peak_rss_gib'))} GiB"
        if gpu:
            mem += f"; {_gib(r['ours_device_peak_gib'])} / {_gib(r.get('peft_device_peak_gib'))}"
            fraction = "/".join(
                "—" if r[k] is None else f"{r[k]:.0%}"
                for k in ("ours_mfu_measured_bf16_peak", "ours_mfu_nominal")
            )
        else:
            fraction = f"{r['ours_fraction_of_matmul_peak']:.0%}"
        load = max(max(pair) for pair in r["load_avg_1m"])
        lines.append(
            f"| {r['size']} b{r['batch']} | {r['dtype']}{remat} | {r['ours_step_s']:.2f} "
            f"({r['ours_cpu_s']:.2f}) | {r.get('peft_mode', '—')} | {peft} | {ratio} | {mem} | "
            f"{fraction} | ≤ {load:.1f} |"
        )
    modes = [r for r in comparisons if "peft_modes_step_s" in r and r["remat_layers"] == "none"]
    if modes:
        lines += ["", "PEFT modes, s/step (compile/warm-up s):"]
        for r in modes:
            each = ", ".join(
                f"{m} {t:.2f}"
                + (f" ({r['peft_compile_s'][m]:.0f})" if r["peft_compile_s"].get(m) else "")
                for m, t in r["peft_modes_step_s"].items()
            )
            lines.append(f"- {r['size']} b{r['batch']} {r['dtype']}: {each}")
    return "\n".join(lines)
