"""Learning curves of training runs: the logged values of metrics.jsonl, grouped into panels.

Values are named `train/<metric>` or `eval/<metric>`; `collect_points` picks those a regular
expression matches (the last record of a step counts), `panels_of` groups them by family (each
training metric alone, evaluation metrics by their last name part), `write_csv` and `plot` write
them (`tools/learning_curves.py`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
import re
from collections.abc import Sequence

from prompt_tuning.analysis.errors import AnalysisError
from prompt_tuning.model_dir import ModelDir, last_per_step

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


def collect_points(
    model_dirs: Sequence[str], labels: Sequence[str], metrics: str = DEFAULT_METRICS
) -> list[Point]:
    """The values of every run whose name the regex `metrics` matches, run by run.

    Args:
      model_dirs: the runs' MODEL_DIRs.
      labels: one name per run.
      metrics: a regular expression searched in the `kind/metric` names.

    Raises:
      AnalysisError: labels do not match the runs, a bad regex, or no metric matches.
    """
    if len(labels) != len(model_dirs):
        raise AnalysisError(
            f"Give one --label per MODEL_DIR: {len(labels)} labels for {len(model_dirs)} runs."
        )
    try:
        pattern = re.compile(metrics)
    except re.error as error:
        raise AnalysisError(f"--metrics {metrics!r} is not a regex: {error}.") from None
    points = []
    for model_dir, label in zip(model_dirs, labels):
        points += read_points(model_dir, label, pattern)
    if not points:
        raise AnalysisError(
            f"No logged metric matches --metrics {metrics!r} (names are like train/loss, "
            "eval/<task>/accuracy, eval/mean)."
        )
    return points
