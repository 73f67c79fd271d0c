"""analysis/learning_curves and analysis/rank_probe on hand-written metrics.jsonl files."""

import json
import math

import pytest

from prompt_tuning.analysis import learning_curves as curves
from prompt_tuning.analysis import rank_probe
from prompt_tuning.analysis.errors import AnalysisError


def _write_metrics(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_points_keep_the_last_record_of_a_step_and_group_by_family(tmp_path):
    run = _write_metrics(
        tmp_path / "a",
        [
            {"kind": "train", "step": 1, "loss": 3.0, "learning_rate": 0.3},
            {"kind": "train", "step": 2, "loss": 2.5, "learning_rate": 0.3},
            {"kind": "eval", "step": 2, "t1/accuracy": 0.5, "t2/accuracy": 0.25, "mean": 0.4},
            {"kind": "train", "step": 2, "loss": 2.0, "learning_rate": 0.3},  # resumed: wins
        ],
    )
    points = curves.collect_points([str(run)], ["a"])
    assert sorted((p.metric, p.step, p.value) for p in points) == [
        ("eval/mean", 2, 0.4),
        ("eval/t1/accuracy", 2, 0.5),
        ("eval/t2/accuracy", 2, 0.25),
        ("train/loss", 1, 3.0),
        ("train/loss", 2, 2.0),
    ]
    assert curves.panels_of(points) == {
        "train/loss": ["train/loss"],
        "eval/accuracy": ["eval/t1/accuracy", "eval/t2/accuracy"],
        "eval/mean": ["eval/mean"],
    }
    with pytest.raises(AnalysisError, match="not a regex"):
        curves.collect_points([str(run)], ["a"], "(")


def test_rank_rows_count_sigma_as_logged(tmp_path):
    run = _write_metrics(
        tmp_path / "r",
        [
            {
                "kind": "train",
                "step": 5,
                "loss": 1.0,
                "prompt_positive_diagonal": 3,
                "prompt_rank": 4,
            },
            {
                "kind": "train",
                "step": 10,
                "prompt_positive_diagonal": 2,
                "prompt_negative_diagonal": 1,
                "prompt_rank": 4,
            },
        ],
    )
    rows = rank_probe.rank_rows(run)
    assert [(r.step, r.positive, r.rank, r.source) for r in rows] == [
        (5, 3.0, 4.0, "metrics"),
        (10, 2.0, 4.0, "metrics"),
    ]
    assert math.isnan(rows[0].negative) and rows[1].negative == 1.0
    rank_probe.write_csv(rows, tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines == [
        "step,positive,negative,rank,source",
        "5,3.0,,4.0,metrics",
        "10,2.0,1.0,4.0,metrics",
    ]
    empty = _write_metrics(tmp_path / "e", [{"kind": "train", "step": 1, "loss": 1.0}])
    with pytest.raises(AnalysisError, match="RankProbePrompt"):
        rank_probe.rank_rows(empty)
