"""The rank of a DPT rank-probe prompt over training (Xiao et al., 2023, section 2.2, Figure 3).

A `RankProbePrompt` is `(U ReLU(Sigma) V)^T` with only the diagonal of Sigma [r] trained; the
number of positive entries is the prompt's rank. `rows` gathers the counts the trainer logged in
metrics.jsonl (and, optionally, those counted from Sigma in every kept checkpoint); `write_csv`
and `plot` write them (`tools/rank_probe.py`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
from collections.abc import Sequence

import numpy as np

from prompt_tuning.analysis.errors import AnalysisError
from prompt_tuning.model_dir import ModelDir

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


def rows_from_metrics(model_dir: str | pathlib.Path) -> list[RankRow]:
    """The rank-probe counts of every training log line of MODEL_DIR/metrics.jsonl.

    Raises:
      AnalysisError: no training record holds `prompt_positive_diagonal`.
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
        raise AnalysisError(
            f"{model_dir}/metrics.jsonl has no {POSITIVE} values: was the run trained with a "
            "RankProbePrompt (gin_configs/prompts/rank_probe.gin)?"
        )
    return rows


def sigma_by_step(model_dir: str | pathlib.Path) -> dict[int, np.ndarray]:
    """Sigma [r] of every checkpoint a run kept (checkpoints/<step> and best/<step>).

    Raises:
      AnalysisError: a checkpoint holds no `encoder/prompt/sigma` (not a rank-probe run).
    """
    from prompt_tuning.train import checkpoints  # noqa: PLC0415

    found = {}
    for best in (True, False):
        for step in ModelDir(model_dir).checkpoint_steps(best):
            _, params = checkpoints.load_trained_params(model_dir, best, step)
            sigma = params.get("encoder", {}).get("prompt", {}).get("sigma")
            if sigma is None:
                raise AnalysisError(
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


def rank_rows(model_dir: str | pathlib.Path, with_checkpoints: bool = False) -> list[RankRow]:
    """The logged counts (and those of the kept checkpoints), by step then source.

    Raises:
      AnalysisError: the run logged no rank-probe counts, or a checkpoint of another prompt.
    """
    found = rows_from_metrics(model_dir)
    if with_checkpoints:
        found += rows_from_checkpoints(model_dir)
    found.sort(key=lambda r: (r.step, r.source))
    return found
