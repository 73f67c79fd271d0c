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
import csv
import dataclasses
import math
import pathlib
import re
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/learning_curves.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.model_dir import ModelDir, last_per_step  # noqa: E402
from tools import _common  # noqa: E402

DEFAULT_METRICS = r"^train/loss$|^eval/"
CSV_COLUMNS = ("label", "model_dir", "metric", "step", "value")


@dataclasses.dataclass(frozen=True)
class Point:
    """One logged value."""

    label: str
    model_dir: str
    metric: str
    step: int
    value: float


@dataclasses.dataclass
class CurvesResult:
    """What `main` returns: the plotted points, the panels and the files written."""

    points: list[Point]
    panels: dict[str, list[str]]
    png: pathlib.Path
    csv: pathlib.Path


def read_points(model_dir: str, label: str, pattern: re.Pattern) -> list[Point]:
    """The values of one run whose `kind/metric` name matches `pattern` (last record per step)."""
    records = ModelDir(model_dir).read_metrics()
    points = []
    for kind in ("train", "eval"):
        for record in last_per_step(records, kind):
            for key, value in record.items():
                name = f"{kind}/{key}"
                if key in ("step", "kind") or not pattern.search(name):
                    continue
                if isinstance(value, int | float) and not isinstance(value, bool):
                    points.append(Point(label, model_dir, name, int(record["step"]), float(value)))
    return points


def family(metric: str) -> str:
    """The panel of a metric: `train/<name>` itself, `eval/.../<name>` -> `eval/<name>`."""
    kind, _, rest = metric.partition("/")
    return metric if kind == "train" else f"eval/{rest.rsplit('/', 1)[-1]}"


def panels_of(points: Sequence[Point]) -> dict[str, list[str]]:
    """`{family: metrics}`, training families first, in order of appearance."""
    panels: dict[str, list[str]] = {}
    for point in sorted(points, key=lambda p: not p.metric.startswith("train/")):
        metrics = panels.setdefault(family(point.metric), [])
        if point.metric not in metrics:
            metrics.append(point.metric)
    return panels


def write_csv(points: Sequence[Point], path: pathlib.Path) -> None:
    """Writes one row per point (`label,model_dir,metric,step,value`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for p in points:
            writer.writerow([p.label, p.model_dir, p.metric, p.step, repr(p.value)])


def plot(points: Sequence[Point], panels: dict[str, list[str]], path: pathlib.Path) -> None:
    """One panel per family; one line per (run, metric)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.5 * rows), squeeze=False)
    labels = list(dict.fromkeys(p.label for p in points))
    for ax, (name, metrics) in zip(axes.flat, panels.items()):
        for label in labels:
            for metric in metrics:
                series = sorted(
                    (p.step, p.value) for p in points if (p.label, p.metric) == (label, metric)
                )
                if not series:
                    continue
                legend = label if len(metrics) == 1 else f"{label}: {metric.split('/', 1)[1]}"
                style = "-" if metric.startswith("train/") else "-o"
                ax.plot(*zip(*series), style, ms=3, label=legend)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dirs", nargs="+", help="training runs' MODEL_DIRs")
    parser.add_argument("--label", action="append", help="a name per MODEL_DIR (repeat)")
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help="regex over kind/metric names")
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
      ToolError: labels do not match the runs, a bad regex, or no metric matches.
    """
    args = parse_args(argv)
    labels = args.label or [pathlib.Path(d).name for d in args.model_dirs]
    if len(labels) != len(args.model_dirs):
        raise _common.ToolError(
            f"Give one --label per MODEL_DIR: {len(labels)} labels for {len(args.model_dirs)} runs."
        )
    try:
        pattern = re.compile(args.metrics)
    except re.error as error:
        raise _common.ToolError(f"--metrics {args.metrics!r} is not a regex: {error}.") from None
    points = []
    for model_dir, label in zip(args.model_dirs, labels):
        points += read_points(model_dir, label, pattern)
    if not points:
        raise _common.ToolError(
            f"No logged metric matches --metrics {args.metrics!r} (names are like train/loss, "
            "eval/<task>/accuracy, eval/mean)."
        )
    panels = panels_of(points)
    png = pathlib.Path(args.output or pathlib.Path(args.model_dirs[0]) / "learning_curves.png")
    csv_path = pathlib.Path(args.csv) if args.csv else png.with_suffix(".csv")
    write_csv(points, csv_path)
    plot(points, panels, png)
    print(f"{len(points)} values in {len(panels)} panels ({', '.join(panels)}).")
    print(f"Wrote {png} and {csv_path}.")
    return CurvesResult(points, panels, png, csv_path)


if __name__ == "__main__":
    _common.cli(main)
