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
import dataclasses
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/rank_probe.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.analysis import rank_probe  # noqa: E402
from tools import _common  # noqa: E402


@dataclasses.dataclass
class RankProbeResult:
    """What `main` returns: the rows plotted and the files written."""

    rows: list[rank_probe.RankRow]
    png: pathlib.Path
    csv: pathlib.Path


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
      AnalysisError: the run has no rank-probe metrics or checkpoints of another prompt.
    """
    args = parse_args(argv)
    rows = rank_probe.rank_rows(args.model_dir, args.checkpoints)
    png = pathlib.Path(args.output or pathlib.Path(args.model_dir) / "rank_probe.png")
    csv_path = pathlib.Path(args.csv) if args.csv else png.with_suffix(".csv")
    rank_probe.write_csv(rows, csv_path)
    rank_probe.plot(rows, png, f"Rank probe: {pathlib.Path(args.model_dir).name}")
    last = [r for r in rows if r.source == "metrics"][-1]
    print(
        f"step {last.step}: {last.positive:g} positive, {last.negative:g} negative of "
        f"r = {last.rank:g} diagonal entries. Wrote {png} and {csv_path}."
    )
    return RankProbeResult(rows, png, csv_path)


if __name__ == "__main__":
    _common.cli(main)
