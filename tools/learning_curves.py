"""Learning curves of training runs: metrics.jsonl to a PNG and a CSV.

    python tools/learning_curves.py runs/seed0 runs/seed1 --label seed0 --label seed1 \
        --output curves.png

Every logged value of each MODEL_DIR's metrics.jsonl is named `train/<metric>` or
`eval/<metric>` (e.g. `train/loss`, `eval/builtin_keyword/accuracy`, `eval/mean`). `--metrics`
(a regular expression searched in these names; default `^train/loss$|^eval/`) picks the curves.
One panel per metric family: each training metric is its own family; evaluation metrics group by
their last name part, so `eval/taskless_glue_rte_v002/accuracy` and
`eval/taskless_super_glue_cb_v102/accuracy` share the `accuracy` panel. Runs are overlaid, named
by `--label` (one per MODEL_DIR; default the folder names). A resumed run may log a step twice; the
last record of a step counts.

Outputs: `--output` (PNG, default `learning_curves.png` in the first MODEL_DIR) and `--csv`
(default: the PNG's path with `.csv`), one row per value: `label,model_dir,metric,step,value`.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/learning_curves.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.analysis import learning_curves as curves  # noqa: E402
from tools import _common  # noqa: E402


@dataclasses.dataclass
class CurvesResult:
    """What `main` returns: the plotted points, the panels and the files written."""

    points: list[curves.Point]
    panels: dict[str, list[str]]
    png: pathlib.Path
    csv: pathlib.Path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dirs", nargs="+", help="training runs' MODEL_DIRs")
    parser.add_argument("--label", action="append", help="a name per MODEL_DIR (repeat)")
    parser.add_argument(
        "--metrics", default=curves.DEFAULT_METRICS, help="regex over kind/metric names"
    )
    parser.add_argument("--output", help="PNG path (default FIRST_MODEL_DIR/learning_curves.png)")
    parser.add_argument("--csv", help="CSV path (default: --output with .csv)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> CurvesResult:
    """Runs the tool.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The `CurvesResult`.

    Raises:
      AnalysisError: labels do not match the runs, a bad regex, or no metric matches.
    """
    args = parse_args(argv)
    labels = args.label or [pathlib.Path(d).name for d in args.model_dirs]
    points = curves.collect_points(args.model_dirs, labels, args.metrics)
    panels = curves.panels_of(points)
    png = pathlib.Path(args.output or pathlib.Path(args.model_dirs[0]) / "learning_curves.png")
    csv_path = pathlib.Path(args.csv) if args.csv else png.with_suffix(".csv")
    curves.write_csv(points, csv_path)
    curves.plot(points, panels, png)
    print(f"{len(points)} values in {len(panels)} panels ({', '.join(panels)}).")
    print(f"Wrote {png} and {csv_path}.")
    return CurvesResult(points, panels, png, csv_path)


if __name__ == "__main__":
    _common.cli(main)
