"""tools/ensemble.py: per-prompt rows equal evaluating each prompt alone; the vote is a majority."""

import collections
import json

import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.model_dir import is_run
from prompt_tuning.predict import ensemble_eval, evaluation, inference
from prompt_tuning.predict.predictor import Predictor
from prompt_tuning.t5 import checkpoints as t5_checkpoints
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network, precision
from prompt_tuning.train import data
from prompt_tuning.train.model import PromptModel
from tests import tools_fixtures
from tests.tools_fixtures import frozen_checkpoint, seed_runs  # noqa: F401 (pytest fixtures)
from tools import _common, ensemble

NUM_EXAMPLES = 32
BATCH = 16


def majority(candidates):
    """The most frequent candidate; ties go to the earliest (Lester et al.'s vote)."""
    counts = collections.Counter(candidates)
    return next(c for c in candidates if counts[c] == max(counts.values()))


@pytest.fixture(scope="module")
def report(seed_runs, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ensemble")
    result = ensemble.main(
        [
            *map(str, seed_runs),
            f"--num_examples={NUM_EXAMPLES}",
            f"--batch_size={BATCH}",
            f"--output={out / 'table.md'}",
            f"--predictions={out / 'predictions.jsonl'}",
        ]
    )
    return result, out


@pytest.fixture(scope="module")
def alone(seed_runs, frozen_checkpoint):  # noqa: F811
    """Each run's latest prompt evaluated alone: metrics, decoded and rank-chosen predictions.

    In the precision the runs trained in and the tool evaluates in (runs/prompt_finetune.gin:
    ACTIVATION_DTYPE = FROZEN_DTYPE = "bfloat16").
    """
    config = tools_fixtures.tiny_config().replace(dtype="bfloat16")
    model = PromptModel(
        network.EncoderDecoder(config, prompt=prompts.Prompt(length=tools_fixtures.PROMPT_LENGTH))
    )
    _, frozen = t5_checkpoints.load_checkpoint(frozen_checkpoint, config)
    frozen = precision.cast_matmul_weights(frozen, jnp.bfloat16)
    lengths, task = tools_fixtures.LENGTHS, tools_fixtures.TASK
    evaluator = evaluation.Evaluator(task, lengths, model, BATCH, num_examples=NUM_EXAMPLES)
    predictor = Predictor(model)
    task_obj = data.get_task_or_mixture(task)
    out = []
    for run in seed_runs:
        prompt = np.load(run / "prompts" / "step_100.npy")
        params = dict(frozen, encoder=dict(frozen["encoder"], prompt={"prompt": prompt}))
        predict = lambda labels, p=params: [  # noqa: E731
            r["prediction"]
            for r in inference.predict_task(
                predictor, p, task_obj, lengths, BATCH, "validation", NUM_EXAMPLES, labels=labels
            )
        ]
        out.append(
            {
                "metrics": evaluator.evaluate(params),
                "decoded": predict(None),
                "ranked": predict(("no", "yes")),
            }
        )
    return out


def test_each_prompt_row_equals_evaluating_it_alone(report, alone):
    result, _ = report
    assert len(result.members) == 3
    for got, want in zip(result.members, alone):
        assert got.keys() == want["metrics"].keys()
        for key, value in want["metrics"].items():
            assert got[key] == pytest.approx(value, abs=1e-9), key
    # The prompts differ: otherwise the test could not tell them apart.
    assert len({r["builtin_keyword/rank_accuracy"] for r in result.members}) > 1


def test_ensemble_predictions_are_the_majority_of_the_prompts(report, alone):
    result, out = report
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert records == result.predictions and len(records) == NUM_EXAMPLES
    disagreements = 0
    for i, record in enumerate(records):
        decoded = [a["decoded"][i] for a in alone]
        ranked = [a["ranked"][i] for a in alone]
        assert record["predictions"] == decoded
        assert record["rank_predictions"] == ranked
        assert record["ensemble"] == majority(decoded)
        assert record["rank_ensemble"] == majority(ranked)
        disagreements += len(set(decoded)) > 1
    assert disagreements > 0
    # The ensemble's rank accuracy is that of the voted labels.
    voted = np.mean([r["rank_ensemble"] == r["target"] for r in records]) * 100
    assert result.ensemble["builtin_keyword/rank_accuracy"] == pytest.approx(voted)


def test_table_has_lester_table_3_rows(report):
    result, out = report
    text = (out / "table.md").read_text()
    assert text == result.markdown
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in lines] == [
        "prompt",
        *result.names,
        "Average",
        "Best",
        "Ensemble",
    ]
    key = "builtin_keyword/rank_accuracy"
    column = lines[0].split(" | ").index(key)
    average = np.mean([m[key] for m in result.members])
    assert lines[4].split(" | ")[column] == f"{average:.2f}"
    assert result.average[key] == pytest.approx(average)
    best = int(np.argmax([evaluation.select_metric(m) for m in result.members]))
    assert result.best == best
    assert lines[5].split(" | ")[1:] == lines[1 + best].split(" | ")[1:]


def test_npy_sources_need_a_config_run(seed_runs, tmp_path):  # noqa: F811
    paths = [str(run / "prompts" / "step_100.npy") for run in seed_runs]
    with pytest.raises(_common.ToolError, match="pass --config_dir"):
        ensemble.main(paths)
    with pytest.raises(_common.ToolError, match="at least two prompts"):
        ensemble.main(paths[:1])


def test_a_peft_adapter_folder_is_a_prompt_source_not_a_run(tmp_path):
    pytest.importorskip("peft", reason="the PEFT reference: `pip install peft` (test extra)")
    from tests.export_peft_test import _peft_saved  # noqa: PLC0415

    folder, weight = _peft_saved(tmp_path, 32, length=3)
    assert not is_run(folder) and is_run(tmp_path)
    assert ensemble_eval.source_prompt(str(folder), best=False) == folder
    model = PromptModel(network.EncoderDecoder(t5_config.tiny(), prompt=prompts.Prompt(length=3)))
    np.testing.assert_array_equal(inference.read_prompt_file(folder, model), weight)
    wide = PromptModel(
        network.EncoderDecoder(t5_config.tiny(emb_dim=48), prompt=prompts.Prompt(length=3))
    )
    with pytest.raises(ValueError, match=r"token_dim is 32.*width \(emb_dim\) is 48"):
        inference.read_prompt_file(folder, wide)
