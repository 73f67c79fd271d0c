"""tools/rank_probe.py and the trainer's rank-probe metrics: counts of Sigma by hand, PNG, CSV."""

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.analysis.errors import AnalysisError
from prompt_tuning.train import checkpoints, trainer
from tests.tools_fixtures import assert_png, frozen_checkpoint, rank_probe_run  # noqa: F401
from tools import rank_probe

ROOT = pathlib.Path(__file__).resolve().parents[1]


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_diagnostics_count_positive_negative_and_rank():
    probe = prompts.RankProbePrompt(length=5)
    sigma = np.array([0.5, -0.1, 2.0, 0.0, -3.0])  # zero counts as neither
    diagnostics = trainer._prompt_diagnostics(probe, {"encoder": {"prompt": {"sigma": sigma}}})
    assert diagnostics == {
        "prompt_positive_diagonal": 2.0,
        "prompt_negative_diagonal": 2.0,
        "prompt_rank": 5.0,
    }
    assert trainer._prompt_diagnostics(prompts.Prompt(length=4), {}) == {}


def test_csv_matches_sigma_of_the_last_checkpoint_and_the_log(rank_probe_run, tmp_path):  # noqa: F811
    png = tmp_path / "probe.png"
    result = rank_probe.main([f"--model_dir={rank_probe_run}", f"--output={png}", "--checkpoints"])
    assert_png(png)
    assert result.csv == tmp_path / "probe.csv"
    rows = read_csv(result.csv)
    logged = {r["step"]: r for r in rows if r["source"] == "metrics"}
    assert sorted(map(int, logged)) == list(range(1, 11))
    # The last step by hand, from Sigma as the library reads it back.
    step, params = checkpoints.load_trained_params(rank_probe_run)
    sigma = np.asarray(params["encoder"]["prompt"]["sigma"])
    assert step == 10 and sigma.shape == (8,)
    want = (int((sigma > 0).sum()), int((sigma < 0).sum()), sigma.size)
    last = logged["10"]
    assert (float(last["positive"]), float(last["negative"]), float(last["rank"])) == want
    assert want[0] + want[1] == 8 and want[1] > 0  # the probe lost rank during training
    # Every logged row is metrics.jsonl's value; checkpoint rows agree with the log.
    records = [json.loads(line) for line in (rank_probe_run / "metrics.jsonl").open()]
    for record in records:
        row = logged[str(record["step"])]
        assert float(row["positive"]) == record["prompt_positive_diagonal"]
        assert float(row["negative"]) == record["prompt_negative_diagonal"]
    saved = {r["step"]: r for r in rows if r["source"] == "checkpoint"}
    assert sorted(saved) == ["10", "5"]
    for s, row in saved.items():
        assert (row["positive"], row["negative"]) == (logged[s]["positive"], logged[s]["negative"])


def test_runs_as_a_script(rank_probe_run, tmp_path):  # noqa: F811
    png = tmp_path / "cli.png"
    command = [sys.executable, "tools/rank_probe.py", f"--model_dir={rank_probe_run}"]
    done = subprocess.run(
        [*command, f"--output={png}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 10:" in done.stdout
    assert_png(png)


def test_run_without_probe_metrics_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "kind": "train", "loss": 1.0}))
    with pytest.raises(AnalysisError, match="trained with a RankProbePrompt"):
        rank_probe.main([f"--model_dir={tmp_path}"])
