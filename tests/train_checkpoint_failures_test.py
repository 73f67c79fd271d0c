"""Damaged checkpoints, a run of another shape, an unwritable MODEL_DIR and a full disk, for real.

The checkpoints are written by a real short training run of the tiny T5 and then damaged on disk
(a file cut short, an item deleted, metadata that does not parse); the full disk is a real
file-size limit (RLIMIT_FSIZE) in a subprocess, the unwritable MODEL_DIR a file in the way and,
where mounting is permitted, a read-only tmpfs.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from train_trainer_test import run, tiny_module

from prompt_tuning.faults import checkpoint_checks
from prompt_tuning.model_dir import checkpoint_manager
from prompt_tuning.train import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3 steps of the tiny model, checkpointed every step, KEEP=2: checkpoints 2 and 3."""
    model_dir = tmp_path_factory.mktemp("trained")
    run(model_dir, 3, save_period=1, keep=2)
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["2", "3"]
    return model_dir


def _copy(trained, tmp_path) -> pathlib.Path:
    model_dir = tmp_path / "run"
    shutil.copytree(trained, model_dir)
    return model_dir


def _cut_short(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage(step_dir: pathlib.Path, kind: str) -> None:
    """Damages a real checkpoint folder as a crash, a full disk or a bad copy would."""
    if kind == "data file cut short":  # the OCDBT data files holding the arrays
        for path in (step_dir / "state" / "d").iterdir():
            _cut_short(path)
    elif kind == "data file missing":
        for path in (step_dir / "state" / "d").iterdir():
            path.unlink()
    elif kind == "array metadata cut short":
        _cut_short(step_dir / "state" / "_METADATA")
    elif kind == "array metadata missing":
        (step_dir / "state" / "_METADATA").unlink()
    elif kind == "item missing":
        shutil.rmtree(step_dir / "meta")
    elif kind == "meta does not parse":
        _cut_short(step_dir / "meta" / "metadata")


# What each damage must be reported as (independent of orbax's own words where we check first).
EXPECTED = {
    "data file cut short": r"reading it failed: ValueError: OUT_OF_RANGE",
    "data file missing": r"reading it failed: ValueError: NOT_FOUND",
    "array metadata cut short": r"state/_METADATA does not parse as JSON .*cut short",
    "array metadata missing": r"state/_METADATA is missing",
    "item missing": r"the item 'meta' is missing",
    "meta does not parse": r"meta/metadata does not parse as JSON .*cut short",
}


def _abstract_state(model_dir: pathlib.Path):
    """This run's state structure, read from an intact checkpoint (as `load_trained_params`)."""
    import jax  # noqa: PLC0415

    manager = checkpoint_manager(model_dir / "checkpoints")
    try:
        metadata = manager.item_metadata(2).state
    finally:
        manager.close()
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
        dict(getattr(metadata, "tree", metadata)),
    )


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_damaged_latest_falls_back_to_the_newest_intact_one(trained, tmp_path, kind):
    model_dir = _copy(trained, tmp_path)
    abstract = _abstract_state(model_dir)
    _damage(model_dir / "checkpoints" / "3", kind)
    messages = []
    checkpointer = checkpoints.TrainCheckpointer(model_dir, keep=2)
    try:
        step, state, meta = checkpointer.restore_newest_intact(abstract, messages.append)
    finally:
        checkpointer.close()
    assert step == 2 and meta["step"] == 2
    np.testing.assert_array_equal(
        np.asarray(state["params"]["encoder"]["prompt"]["prompt"]),
        np.load(trained / "prompts" / "step_2.npy"),
    )
    damaged, resumed = messages
    assert damaged.startswith(f"Checkpoint {model_dir / 'checkpoints' / '3'} is damaged: ")
    assert re.search(EXPECTED[kind], damaged), damaged
    assert "Resuming from step 2, the newest intact checkpoint (KEEP=2)" in resumed
    # Kept for inspection, out of the way of the next save of step 3.
    assert (model_dir / "damaged_checkpoints" / "3").is_dir()
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["2"]


def test_no_intact_checkpoint_stops_naming_each_and_moves_nothing(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    abstract = _abstract_state(model_dir)
    _damage(model_dir / "checkpoints" / "3", "data file cut short")
    _damage(model_dir / "checkpoints" / "2", "item missing")
    checkpointer = checkpoints.TrainCheckpointer(model_dir, keep=2)
    try:
        with pytest.raises(checkpoint_checks.DamagedCheckpointError) as raised:
            checkpointer.restore_newest_intact(abstract, lambda message: None)
    finally:
        checkpointer.close()
    message = str(raised.value)
    assert f"{model_dir / 'checkpoints' / '3'}: reading it failed" in message
    assert f"{model_dir / 'checkpoints' / '2'}: the item 'meta' is missing" in message
    assert "move" in message and "another MODEL_DIR" in message
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["2", "3"]
    assert not (model_dir / "damaged_checkpoints").exists()


def test_training_resumes_from_the_intact_checkpoint_and_redoes_the_damaged_step(
    trained, tmp_path, capsys
):
    model_dir = _copy(trained, tmp_path)
    _damage(model_dir / "checkpoints" / "3", "data file cut short")
    capsys.readouterr()
    result = run(model_dir, 3, save_period=1, keep=2)
    out = capsys.readouterr().out
    assert f"Checkpoint {model_dir / 'checkpoints' / '3'} is damaged" in out
    assert "Resuming from step 2, the newest intact checkpoint (KEEP=2)" in out
    assert result.step == 3 and len(result.train_metrics) == 1  # step 3 only, not from 0
    # Step 3 done again from step 2 gives the prompt the first run exported at step 3.
    np.testing.assert_array_equal(
        result.trainable["encoder"]["prompt"]["prompt"], np.load(trained / "prompts" / "step_3.npy")
    )
    step, params = checkpoints.load_trained_params(model_dir)
    assert step == 3
    np.testing.assert_array_equal(
        params["encoder"]["prompt"]["prompt"], result.trainable["encoder"]["prompt"]["prompt"]
    )


def test_training_with_only_a_damaged_checkpoint_stops_instead_of_starting_again(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    shutil.rmtree(model_dir / "checkpoints" / "2")  # KEEP=1 keeps only the latest
    _damage(model_dir / "checkpoints" / "3", "meta does not parse")
    metrics = (model_dir / "metrics.jsonl").read_text()
    with pytest.raises(checkpoint_checks.DamagedCheckpointError, match="no intact checkpoint"):
        run(model_dir, 5, save_period=1, keep=1)
    assert (model_dir / "metrics.jsonl").read_text() == metrics  # no step was run
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["3"]


def test_lost_checkpoints_under_exported_prompts_stop_the_run(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    shutil.rmtree(model_dir / "checkpoints")
    with pytest.raises(ValueError, match=r"prompts of a run up to step 3 .*no checkpoint"):
        run(model_dir, 5, save_period=1)
    assert list((model_dir / "checkpoints").iterdir()) == []  # nothing trained or saved


def test_a_run_of_another_prompt_shape_stops_with_both_shapes(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    with pytest.raises(checkpoint_checks.CheckpointMismatchError) as raised:
        run(model_dir, 5, model=tiny_module(prompt_length=8))
    message = str(raised.value)
    assert "params/encoder/prompt/prompt: checkpoint [4, 32] float32, this run [8, 32]" in message
    assert "another MODEL_DIR" in message
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["2", "3"]


def test_model_dir_behind_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(checkpoint_checks.CheckpointWriteError) as raised:
        run(tmp_path / "taken" / "run", 2)
    message = str(raised.value)
    assert f"MODEL_DIR {tmp_path / 'taken' / 'run'} is not writable" in message
    assert "--gin.MODEL_DIR" in message
    with pytest.raises(checkpoint_checks.CheckpointWriteError, match="a file stands where"):
        checkpoint_checks.check_model_dir_writable(tmp_path / "taken")


def test_read_only_model_dir_is_refused(tmp_path):
    # Root ignores permission bits, so only a read-only file system really refuses a write.
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode().strip()}")
    try:
        with pytest.raises(checkpoint_checks.CheckpointWriteError) as raised:
            checkpoint_checks.check_model_dir_writable(mount / "run")
        assert "Read-only file system" in str(raised.value)
        assert str(mount / "run") in str(raised.value)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from train_trainer_test import run, tiny_module
    model_dir = sys.argv[1]
    # 200 prompt vectors: each checkpoint's data file (~27 kB) is larger than the limit set below,
    # the metrics and event files of a few steps are not.
    module = tiny_module(prompt_length=200)
    run(model_dir, 2, model=module, save_period=2, keep=2)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    try:
        run(model_dir, 4, model=module, save_period=2, keep=2)
    except OSError as error:
        print("FAILED:", type(error).__name__, error)
    """
)


def test_full_disk_during_a_save_names_the_path_and_keeps_the_previous_checkpoint(tmp_path):
    model_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(model_dir), str(REPO / "tests")],
        capture_output=True,
        env=env,
        timeout=600,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    (line,) = [x for x in out.splitlines() if x.startswith("FAILED:")]
    assert line.startswith("FAILED: CheckpointWriteError [Errno 27]")
    assert f"Could not write the checkpoint of step 4 to {model_dir / 'checkpoints' / '4'}" in line
    assert "File too large" in line and "checkpoint of step 2" in line and "is intact" in line
    assert "Free space" in line and "run the same command again" in line
    # Nothing half-written: no step 4 (finished or not), no export of step 4.
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["2"]
    assert sorted(p.name for p in (model_dir / "prompts").iterdir()) == ["step_2.npy"]
    # The previous checkpoint is intact and loadable.
    step, params = checkpoints.load_trained_params(model_dir)
    assert step == 2
    np.testing.assert_array_equal(
        params["encoder"]["prompt"]["prompt"], np.load(model_dir / "prompts" / "step_2.npy")
    )
    assert json.loads((model_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4


def test_reading_a_damaged_checkpoint_for_evaluation_names_it(trained, tmp_path):
    model_dir = _copy(trained, tmp_path)
    _damage(model_dir / "checkpoints" / "3", "data file cut short")
    with pytest.raises(checkpoint_checks.DamagedCheckpointError) as raised:
        checkpoints.load_trained_params(model_dir)
    message = str(raised.value)
    assert f"Checkpoint {model_dir / 'checkpoints' / '3'} is damaged: reading it failed" in message
    assert "another kept step ([2]" in message and "PROMPT_FILE" in message
    step, params = checkpoints.load_trained_params(model_dir, step=2)  # the intact one reads
    assert step == 2
    np.testing.assert_array_equal(
        params["encoder"]["prompt"]["prompt"], np.load(trained / "prompts" / "step_2.npy")
    )


FULL_METRICS = textwrap.dedent(
    """
    import io, os, resource, signal, sys
    from prompt_tuning.train import logging
    model_dir, path = sys.argv[1], os.path.join(sys.argv[1], "metrics.jsonl")
    logger = logging.MetricsLogger(model_dir, 100, 8, stream=io.StringIO())
    for step in range(1, 21):
        logger.log_train(step, {"loss": 1.0 / step, "accuracy": 0.5})
    logger.close()
    before = open(path, "rb").read()
    logger = logging.MetricsLogger(model_dir, 100, 8, stream=io.StringIO())  # a new events file
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # Room for 30 more bytes in any file: the next record (~150 bytes) is cut short by the OS.
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 30, resource.RLIM_INFINITY))
    try:
        logger.log_train(21, {"loss": 0.04, "accuracy": 0.5})
    except OSError as error:
        print("FAILED:", type(error).__name__, error)
    print("UNCHANGED:", open(path, "rb").read() == before)
    """
)


def test_full_disk_during_a_metrics_record_names_it_and_leaves_no_half_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run(
        [sys.executable, "-c", FULL_METRICS, str(tmp_path)],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    lines = done.stdout.decode().splitlines()
    (failed,) = [x for x in lines if x.startswith("FAILED:")]
    assert failed.startswith("FAILED: CheckpointWriteError [Errno 27] Could not write a metrics")
    assert str(tmp_path / "metrics.jsonl") in failed and "Free space" in failed
    assert "UNCHANGED: True" in lines
    records = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == list(range(1, 21))


def test_fit_problems_lists_every_difference_with_both_shapes():
    import jax  # noqa: PLC0415

    def arrays(**shapes):
        return {k: jax.ShapeDtypeStruct(v, np.float32) for k, v in shapes.items()}

    saved = {"params": arrays(prompt=(4, 32), scale=(32,)), "opt_state": [arrays(v=(4, 32))]}
    wanted = {"params": arrays(prompt=(8, 32)), "opt_state": [arrays(v=(4, 32))]}
    assert checkpoint_checks.fit_problems(saved, wanted) == [
        "params/prompt: checkpoint [4, 32] float32, this run [8, 32] float32",
        "params/scale: checkpoint [32] float32, not in this run",
    ]
    assert checkpoint_checks.fit_problems(wanted, wanted) == []


def test_write_error_keeps_errors_that_are_not_about_the_disk(tmp_path):
    other = ValueError("Checkpoint for step 4 already exists.")
    assert checkpoint_checks.write_error(other, "x", tmp_path, "y") is other
    full = OSError(28, "No space left on device", str(tmp_path / "f"))
    converted = checkpoint_checks.write_error(full, "the checkpoint of step 4", tmp_path, "kept")
    assert isinstance(converted, checkpoint_checks.CheckpointWriteError)
    assert converted.errno == 28 and f"No space left on device ({tmp_path / 'f'})" in str(converted)
