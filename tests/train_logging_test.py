"""What a user sees of a run: progress lines, TensorBoard event files (clu) and metrics.jsonl."""

import io
import json
import re

import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning.train import logging as train_logging


def read_scalars(logdir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the TensorBoard event files under `logdir`."""
    values: dict[str, dict[int, float]] = {}
    files = sorted(logdir.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {logdir}"
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = (
                    float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor")
                    else value.simple_value
                )
                values.setdefault(value.tag, {})[event.step] = number
    return values


@pytest.fixture
def logged(tmp_path):
    stream = io.StringIO()
    logger = train_logging.MetricsLogger(tmp_path, total_steps=10, batch_size=4, stream=stream)
    logger.start(0)
    logger.log_train(5, {"loss": 2.5, "learning_rate": 0.3})
    logger.log_eval(5, {"task/accuracy": 75.0, "mean": 75.0})
    logger.log_train(10, {"loss": 1.25, "learning_rate": 0.3})
    logger.close()
    return tmp_path, stream.getvalue()


def test_tensorboard_event_files_hold_train_and_eval_scalars(logged):
    model_dir, _ = logged
    scalars = read_scalars(model_dir / "tensorboard")
    assert scalars["train/loss"] == {5: 2.5, 10: 1.25}
    np.testing.assert_allclose(scalars["train/learning_rate"][10], 0.3, rtol=1e-6)
    assert scalars["eval/task/accuracy"] == {5: 75.0}
    assert set(scalars["train/steps_per_sec"]) == {5, 10}
    assert set(scalars["train/examples_per_sec"]) == {5, 10}
    # examples/s is steps/s times the batch size of 4.
    np.testing.assert_allclose(
        scalars["train/examples_per_sec"][10], 4 * scalars["train/steps_per_sec"][10], rtol=1e-5
    )


def test_progress_lines_and_metrics_jsonl(logged):
    model_dir, out = logged
    lines = out.splitlines()
    pattern = r"step 5/10 \| loss 2\.5000 \| [\d.]+ steps/s \| \d+ examples/s \| ETA \S+"
    assert re.fullmatch(pattern, lines[0]), lines[0]
    assert lines[1] == "eval @ step 5: mean 75.0000, task/accuracy 75.0000"
    assert lines[2].startswith("step 10/10 | loss 1.2500") and lines[2].endswith("ETA 0s")
    records = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in records] == [(5, "train"), (5, "eval"), (10, "train")]
    assert records[1]["task/accuracy"] == 75.0 and records[2]["eta_seconds"] == 0.0


def test_other_hosts_write_nothing(tmp_path):
    stream = io.StringIO()
    logger = train_logging.MetricsLogger(tmp_path, 10, 4, enabled=False, stream=stream)
    logger.log_train(1, {"loss": 1.0})
    logger.log_eval(1, {"mean": 1.0})
    logger.close()
    assert stream.getvalue() == "" and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("seconds", "text"), [(7.4, "7s"), (172, "2m52s"), (3720, "1h02m"), (float("inf"), "?")]
)
def test_format_duration(seconds, text):
    assert train_logging.format_duration(seconds) == text
