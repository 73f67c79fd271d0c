"""SIGTERM and SIGINT sent to real training, inference and evaluation processes (one process).

Each signal is sent at a point the test observes in the process's output (a progress line, a
batch line of `tests.faults_driver`, a save it holds), never after a fixed sleep. Checked: the
stop step's checkpoint, prompt export and metrics record exist and are the last ones (no step
lost), the exit status (75; 143 for a second signal), and that rerunning the same command ends on
exactly the prompt of an uninterrupted run (float32, 0 difference), also after a second signal
cut a save short (the previous checkpoint intact).
"""

import json
import pathlib
import signal

import numpy as np
import pytest

from prompt_tuning.faults import EXIT_STOPPED
from tests.faults_fixtures import Process, run, smoke_train_args, subprocess_env

STEPS = 8


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One device per process, one compilation cache for the module."""
    return subprocess_env(tmp_path_factory.mktemp("jax_cache"))


def _train_args(model_dir, *extra):
    return smoke_train_args(model_dir, STEPS, "--gin.KEEP=3", *extra)


def _train_steps(model_dir):
    lines = (pathlib.Path(model_dir) / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]


def _kept_steps(model_dir):
    return sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    status, output = run(["prompt_tuning.train", *_train_args(model_dir)], env)
    assert status == 0, output[-3000:]
    return np.load(model_dir / "prompts" / f"step_{STEPS}.npy")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_step_reached_and_the_rerun_ends_on_the_same_prompt(
    tmp_path, env, uninterrupted, signum
):
    args = ["prompt_tuning.train", *_train_args(tmp_path)]
    proc = Process(args, env)
    proc.wait_for("step 3/")  # step 3 done, its save (SAVE_PERIOD 2) not due
    proc.popen.send_signal(signum)
    status, output = proc.finish()
    assert status == EXIT_STOPPED, output[-3000:]
    name = signal.Signals(signum).name
    stop = int(output.split(f"Stopped by {name} at step ")[1].split(" ")[0])
    assert 3 <= stop < STEPS
    assert f"Run the same command to resume from step {stop}." in output
    assert f"(exit status {EXIT_STOPPED})" in output
    # Nothing lost: the checkpoint, prompt and metrics of the last step run are saved.
    assert _kept_steps(tmp_path)[-1] == stop
    assert _train_steps(tmp_path)[-1] == stop
    assert (tmp_path / "prompts" / f"step_{stop}.npy").exists()

    status, output = run(args, env)
    assert status == 0, output[-3000:]
    assert f"Resuming from step {stop} of {STEPS}." in output
    assert _train_steps(tmp_path) == list(range(1, STEPS + 1))
    final = np.load(tmp_path / "prompts" / f"step_{STEPS}.npy")
    np.testing.assert_array_equal(final, uninterrupted)  # float32: 0 difference


def test_second_signal_during_a_save_exits_at_once_keeping_the_previous_checkpoint(
    tmp_path, env, uninterrupted
):
    args = ["prompt_tuning.train", *_train_args(tmp_path)]
    proc = Process(["tests.faults_driver", "train", "--hold_save_after=2", *args[1:]], env)
    proc.wait_for("step 3/")
    proc.popen.send_signal(signal.SIGTERM)  # stop at step 3 or 4: that save is held
    proc.wait_for("HOLDING SAVE")
    held = int(next(line for line in proc.lines if line and "HOLDING" in line).split()[-1])
    proc.popen.send_signal(signal.SIGTERM)
    status, output = proc.finish()
    assert status == 128 + signal.SIGTERM, output[-3000:]
    assert "Second SIGTERM: exiting at once" in output
    # The save cut short left only its temporary folder; step 2 is whole and is resumed.
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert str(held) not in leftovers and any(name.startswith(f"{held}.") for name in leftovers)
    assert _kept_steps(tmp_path) == [2]
    assert not (tmp_path / "prompts" / f"step_{held}.npy").exists()

    status, output = run(args, env)
    assert status == 0, output[-3000:]
    assert f"Resuming from step 2 of {STEPS}." in output
    final = np.load(tmp_path / "prompts" / f"step_{STEPS}.npy")
    np.testing.assert_array_equal(final, uninterrupted)


def _infer_args(output_path, entry="infer"):
    args = [
        "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
        "--gin_file=gin_configs/prompts/prompt_tuning_random_uniform.gin",
        f"--gin_file=gin_configs/runs/prompt_{entry}.gin",
        "--gin.MIXTURE_OR_TASK_NAME='builtin_keyword'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 4}",
        "--gin.PROMPT=None",  # the frozen model alone: nothing to train first
        "--gin.BATCH_SIZE=2",
        f"--gin.inference.{'infer' if entry == 'infer' else 'evaluate'}.num_examples=12",
    ]
    if entry == "infer":
        return [*args, f"--gin.INFER_OUTPUT_PATH='{output_path}'"]
    return [*args, f"--gin.EVAL_OUTPUT_DIR='{output_path}'"]


@pytest.mark.parametrize("entry", ["infer", "eval"])
def test_signal_stops_inference_and_evaluation_between_batches_writing_nothing(
    tmp_path, env, entry
):
    output_path = tmp_path / ("out.jsonl" if entry == "infer" else "eval")
    proc = Process(["tests.faults_driver", entry, *_infer_args(output_path, entry)], env)
    proc.wait_for("BATCH 2")
    proc.popen.send_signal(signal.SIGTERM)
    status, output = proc.finish()
    assert status == EXIT_STOPPED, output[-3000:]
    what = "Inference" if entry == "infer" else "Evaluation"
    assert f"{what} stopped by SIGTERM after " in output
    assert "nothing was written" in output
    assert list(tmp_path.iterdir()) == []  # no partial predictions, no metrics file
