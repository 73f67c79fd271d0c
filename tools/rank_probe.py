"""The rank of a DPT rank-probe prompt over training (Xiao et al., 2023, section 2.2, Figure 3).

    python tools/rank_probe.py --model_dir /tmp/rank_probe

A `RankProbePrompt` (gin_configs/prompts/rank_probe.gin) is `(U ReLU(Sigma) V)^T` with only the
diagonal of Sigma [r] trained, r = min(P, H); the number of positive entries is the prompt's rank.
The trainer logs `prompt_positive_diagonal`, `prompt_negative_diagonal` (entries < 0; zeros count
as neither) and `prompt_rank` (r) with every training log line of metrics.jsonl; this tool plots
positive and negative counts against the step (a PNG line plot, r dashed) and writes them as CSV
(`step,positive,negative,rank,source`). Runs logged before the negative count existed get an empty
`negative` column from metrics.jsonl; `--checkpoints` adds rows (source `checkpoint`) counted
from Sigma in every orbax checkpoint the run kept (checkpoints/ and best/).

Outputs: `--output` (PNG, default MODEL_DIR/rank_probe.png) and `--csv` (default: the PNG's path
with `.csv`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

if __package__ in (None, ""):  # run as `python tools/rank_probe.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.model_dir import ModelDir  # noqa: E402
from tools import _common  # noqa: E402

POSITIVE = "prompt_positive_diagonal"
NEGATIVE = "prompt_negative_diagonal"
RANK = "prompt_rank"
CSV_COLUMNS = ("step", "positive", "negative", "rank", "source")


@dataclasses.dataclass
class RankRow:
    """Diagonal counts of Sigma at one step (NaN: not recorded)."""

    step: int
    positive: float
    negative: float
    rank: float
    source: str


@dataclasses.dataclass
class RankProbeResult:
    """What `main` returns: the rows plotted and the files written."""

    rows: list[RankRow]
    png: pathlib.Path
    csv: pathlib.Path


def rows_from_metrics(model_dir: str | pathlib.Path) -> list[RankRow]:
    """The rank-probe counts of every training log line of MODEL_DIR/metrics.jsonl.

    Raises:
      ToolError: no training record holds `prompt_positive_diagonal`.
    """
    records = ModelDir(model_dir).metrics("train")
    rows = [
        RankRow(
            int(r["step"]),
            float(r[POSITIVE]),
            float(r.get(NEGATIVE, math.nan)),
            float(r.get(RANK, math.nan)),
            "metrics",
        )
        for r in records
        if POSITIVE in r
    ]
    if not rows:
        raise _common.ToolError(
            f"{model_dir}/metrics.jsonl has no {POSITIVE} values: was the run trained with a "
            "RankProbePrompt (gin_configs/prompts/rank_probe.gin)?"
        )
    return rows


def sigma_by_step(model_dir: str | pathlib.Path) -> dict[int, np.ndarray]:
    """Sigma [r] of every checkpoint a run kept (checkpoints/<step> and best/<step>).

    Raises:
      ToolError: a checkpoint holds no `encoder/prompt/sigma` (not a rank-probe run).
    """
    from prompt_tuning.train import checkpoints  # noqa: PLC0415

    found = {}
    for best in (True, False):
        for step in ModelDir(model_dir).checkpoint_steps(best):
            _, params = checkpoints.load_trained_params(model_dir, best, step)
            sigma = params.get("encoder", {}).get("prompt", {}).get("sigma")
            if sigma is None:
                raise _common.ToolError(
                    f"The checkpoint of step {step} in {model_dir} holds no encoder/prompt/sigma: "
                    "it is not a RankProbePrompt run."
                )
            found[step] = sigma
    return dict(sorted(found.items()))


def rows_from_checkpoints(model_dir: str | pathlib.Path) -> list[RankRow]:
    """Counts of positive and negative entries of Sigma in every kept checkpoint."""
    return [
        RankRow(step, float(np.sum(s > 0)), float(np.sum(s < 0)), float(s.size), "checkpoint")
        for step, s in sigma_by_step(model_dir).items()
    ]


def write_csv(rows: Sequence[RankRow], path: pathlib.Path) -> None:
    """Writes `step,positive,negative,rank,source` (NaN as an empty cell)."""
    cell = lambda v: "" if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([cell(getattr(row, c)) for c in CSV_COLUMNS])


def plot(rows: Sequence[RankRow], path: pathlib.Path, title: str) -> None:
    """Line plot of the positive and negative counts against the step (r dashed)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    logged = [r for r in rows if r.source == "metrics"]
    saved = [r for r in rows if r.source == "checkpoint"]
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r.step for r in logged]
    ax.plot(steps, [r.positive for r in logged], "-o", color="tab:green", ms=3, label="positive")
    if any(not math.isnan(r.negative) for r in logged):
        ax.plot(steps, [r.negative for r in logged], "-o", color="tab:red", ms=3, label="negative")
    if saved:
        for name, color in (("positive", "tab:green"), ("negative", "tab:red")):
            values = [getattr(r, name) for r in saved]
            ax.plot(
                [r.step for r in saved],
                values,
                "s",
                color=color,
                mfc="none",
                label=f"{name} (checkpoint)",
            )
    ranks = [r.rank for r in rows if not math.isnan(r.rank)]
    if ranks:
        ax.axhline(max(ranks), color="gray", ls="--", lw=1, label=f"r = {max(ranks):g}")
    ax.set_xlabel("step")
    ax.set_ylabel("diagonal entries of Σ")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", required=True, help="a RankProbePrompt run's MODEL_DIR")
    parser.add_argument("--output", help="PNG path (default MODEL_DIR/rank_probe.png)")
    parser.add_argument("--csv", help="CSV path (default: --output with .csv)")
    parser.add_argument(
        "--checkpoints", action="store_true", help="also count Sigma in the kept checkpoints"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> RankProbeResult:
    """Runs the tool.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The `RankProbeResult`.

    Raises:
      ToolError: the run has no rank-probe metrics or checkpoints of another prompt.
    """
    args = parse_args(argv)
    rows = rows_from_metrics(args.model_dir)
    if args.checkpoints:
        rows += rows_from_checkpoints(args.model_dir)
    rows.sort(key=lambda r: (r.step, r.source))
    png = pathlib.Path(args.output or pathlib.Path(args.model_dir) / "rank_probe.png")
    csv_path = pathlib.Path(args.csv) if args.csv else png.with_suffix(".csv")
    write_csv(rows, csv_path)
    plot(rows, png, f"Rank probe: {pathlib.Path(args.model_dir).name}")
    last = [r for r in rows if r.source == "metrics"][-1]
    print(
        f"step {last.step}: {last.positive:g} positive, {last.negative:g} negative of "
        f"r = {last.rank:g} diagonal entries. Wrote {png} and {csv_path}."
    )
    return RankProbeResult(rows, png, csv_path)


if __name__ == "__main__":
    _common.cli(main)
