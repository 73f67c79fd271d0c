"""tools/learning_curves.py: the CSV holds metrics.jsonl's values, panels by family, a valid PNG."""

import csv
import json
import pathlib
import subprocess
import sys

import pytest

from prompt_tuning.analysis.errors import AnalysisError
from tests.tools_fixtures import assert_png, frozen_checkpoint, tiny_run  # noqa: F401
from tools import learning_curves

ROOT = pathlib.Path(__file__).resolve().parents[1]


def csv_values(path):
    with path.open() as f:
        return {
            (r["label"], r["metric"], int(r["step"])): float(r["value"]) for r in csv.DictReader(f)
        }


def jsonl_values(model_dir, label):
    """{(label, kind/metric, step): value} of train loss and every eval metric, read directly."""
    out = {}
    for line in (model_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if record["kind"] == "eval" and key not in ("step", "kind"):
                out[(label, f"eval/{key}", record["step"])] = value
        if record["kind"] == "train":
            out[(label, "train/loss", record["step"])] = record["loss"]
    return out


def test_csv_equals_the_jsonl_values_of_two_overlaid_runs(tiny_run, tmp_path):  # noqa: F811
    png = tmp_path / "curves.png"
    result = learning_curves.main(
        [str(tiny_run), str(tiny_run), "--label=a", "--label=b", f"--output={png}"]
    )
    assert_png(png)
    want = jsonl_values(tiny_run, "a") | jsonl_values(tiny_run, "b")
    assert csv_values(result.csv) == want
    assert len([k for k in want if k[1] == "train/loss"]) == 12  # 6 steps, 2 runs
    assert list(result.panels)[0] == "train/loss"
    assert result.panels["eval/accuracy"] == ["eval/builtin_keyword/accuracy"]
    assert result.panels["eval/mean"] == ["eval/mean"]


def test_metrics_regex_and_families(tiny_run, tmp_path):  # noqa: F811
    pattern = "rank_accuracy|^train/(accuracy|grad_norm)$"
    result = learning_curves.main(
        [
            str(tiny_run),
            f"--metrics={pattern}",
            f"--csv={tmp_path / 'x.csv'}",
            f"--output={tmp_path / 'x.png'}",
        ]
    )
    assert result.panels == {
        "train/accuracy": ["train/accuracy"],
        "train/grad_norm": ["train/grad_norm"],
        "eval/rank_accuracy": ["eval/builtin_keyword/rank_accuracy"],
    }
    assert {p.metric for p in result.points} == {
        "train/accuracy",
        "train/grad_norm",
        "eval/builtin_keyword/rank_accuracy",
    }
    assert (tmp_path / "x.csv").exists()
    with pytest.raises(AnalysisError, match="one --label per MODEL_DIR"):
        learning_curves.main([str(tiny_run), "--label=a", "--label=b"])
    with pytest.raises(AnalysisError, match="No logged metric matches"):
        learning_curves.main([str(tiny_run), "--metrics=nothing_like_this"])


def test_a_resumed_runs_repeated_step_counts_once_the_last_value(tmp_path):
    lines = [
        {"step": 1, "kind": "train", "loss": 3.0},
        {"step": 2, "kind": "train", "loss": 2.0},
        {"step": 2, "kind": "train", "loss": 2.5},  # the resumed run logged step 2 again
        {"step": 2, "kind": "eval", "t/accuracy": 50.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    result = learning_curves.main([str(tmp_path)])
    assert csv_values(result.csv) == {
        (tmp_path.name, "train/loss", 1): 3.0,
        (tmp_path.name, "train/loss", 2): 2.5,
        (tmp_path.name, "eval/t/accuracy", 2): 50.0,
    }
    assert result.png == tmp_path / "learning_curves.png"


def test_runs_as_a_script(tiny_run, tmp_path):  # noqa: F811
    png = tmp_path / "cli.png"
    done = subprocess.run(
        [sys.executable, "tools/learning_curves.py", str(tiny_run), f"--output={png}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert_png(png)
    done = subprocess.run(
        [sys.executable, "tools/learning_curves.py", str(tmp_path / "missing")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "error: " in done.stderr and "metrics.jsonl" in done.stderr
