"""`prompt_tuning.model_dir` against hand-built MODEL_DIRs, and against a real run's folder."""

import errno
import json
import os
import pathlib

import numpy as np
import pytest

from prompt_tuning import model_dir
from prompt_tuning.faults.checkpoint_checks import CheckpointWriteError
from prompt_tuning.model_dir import ModelDir, ModelDirError
from tests.tools_fixtures import frozen_checkpoint, tiny_run  # noqa: F401 (pytest fixtures)


def _touch(path: pathlib.Path, value: float = 0.0) -> pathlib.Path:
    """Saves a small array at `path` (`.npy`) or its parameters (`.npz`), making folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, prompt=np.full((2, 3), value))
    else:
        np.save(path, np.full((2, 3), value))
    return path


def test_latest_is_the_largest_step_by_number_and_other_files_are_ignored(tmp_path):
    prompts = tmp_path / "prompts"
    for name in ("step_9.npy", "step_10.npy", "step_2.npz", "best.npy", "step_x.npy"):
        _touch(prompts / name)
    (prompts / "notes.txt").write_text("not an export")
    (prompts / "step_11.npy").mkdir()  # a folder, not an export
    run = ModelDir(tmp_path)
    assert run.exported_steps() == {
        2: prompts / "step_2.npz",
        9: prompts / "step_9.npy",
        10: prompts / "step_10.npy",
    }
    assert run.latest_export() == prompts / "step_10.npy"  # not step_9 (a string sort's pick)
    assert model_dir.export_step(prompts / "step_10.npy") == 10
    assert model_dir.export_step(prompts / "best.npy") is None


def test_the_runs_prompt_is_best_then_latest_then_none(tmp_path):
    run = ModelDir(tmp_path)
    assert run.run_export() is None and run.best_export() is None and run.latest_export() is None
    _touch(tmp_path / "prompts" / "step_4.npy")
    assert run.run_export() == tmp_path / "prompts" / "step_4.npy"
    _touch(tmp_path / "prompts" / "best.npz")  # a parameters export (IDPG, deep prompts)
    assert run.run_export() == tmp_path / "prompts" / "best.npz"
    _touch(tmp_path / "prompts" / "best.npy")
    assert run.run_export() == tmp_path / "prompts" / "best.npy"


def test_missing_exports_are_named_with_the_fix(tmp_path):
    run = ModelDir(tmp_path)
    with pytest.raises(ModelDirError, match=r"holds no prompts/step_<N>\.npy .* saved at least"):
        run.prompt_export()
    _touch(tmp_path / "prompts" / "step_2.npy")
    _touch(tmp_path / "prompts" / "step_4.npy")
    with pytest.raises(ModelDirError, match=r"best\.npy does not exist.*EVAL_PERIOD > 0.*--step"):
        run.prompt_export(best=True)
    with pytest.raises(ModelDirError, match=r"no prompt for step 3; saved steps: \[2, 4\]"):
        run.prompt_export(step=3)
    with pytest.raises(ModelDirError, match="at most one of --step and --best"):
        run.prompt_export(step=2, best=True)
    assert run.prompt_export() == tmp_path / "prompts" / "step_4.npy"
    assert run.prompt_export(step=2) == tmp_path / "prompts" / "step_2.npy"


def test_resolve_prompt_takes_a_file_an_adapter_or_a_run(tmp_path):
    loose = _touch(tmp_path / "loose.npy")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    run = tmp_path / "run"
    _touch(run / "prompts" / "step_1.npy")
    assert model_dir.resolve_prompt(prompt=loose) == loose
    assert model_dir.resolve_prompt(prompt=adapter) == adapter
    assert model_dir.resolve_prompt(model_dir=run) == run / "prompts" / "step_1.npy"
    assert model_dir.is_run(run) and not model_dir.is_run(adapter) and not model_dir.is_run(loose)
    with pytest.raises(ModelDirError, match="exactly one of --model_dir"):
        model_dir.resolve_prompt()
    with pytest.raises(ModelDirError, match="exactly one of --model_dir"):
        model_dir.resolve_prompt(model_dir=run, prompt=loose)
    with pytest.raises(ModelDirError, match=r"missing\.npy does not exist"):
        model_dir.resolve_prompt(prompt=tmp_path / "missing.npy")


def test_config_gin_is_read_as_text(tmp_path):
    run = ModelDir(tmp_path)
    assert not run.has_config() and run.config_macros() == {} and run.prompt_module_name() is None
    (tmp_path / "config.gin").write_text(
        "from __gin__ import dynamic_registration\n"
        "MIXTURE_OR_TASK_NAME = 'builtin_sentiment'\n"
        "PROMPT = @prompts.InstancePrompt()\n"
        "PROMPT_LENGTH = 20\n"
        "trainer.train.log_period = 10\n"
    )
    assert run.has_config()
    assert run.config_macros() == {
        "MIXTURE_OR_TASK_NAME": "'builtin_sentiment'",
        "PROMPT": "@prompts.InstancePrompt()",
        "PROMPT_LENGTH": "20",
    }
    assert run.prompt_module_name() == "InstancePrompt"


def test_best_json_round_trip_and_a_hand_edited_file(tmp_path):
    run = ModelDir(tmp_path)
    assert run.read_best() is None
    run.write_best(300, "builtin_sentiment/accuracy", 81.5)
    assert json.loads((tmp_path / "best.json").read_text()) == {
        "step": 300,
        "metric": "builtin_sentiment/accuracy",
        "value": 81.5,
    }
    assert run.read_best()["step"] == 300
    (tmp_path / "best.json").write_text('{"step": 3')
    with pytest.raises(ValueError, match=r"best\.json is not JSON .* delete it"):
        run.read_best()


def test_metrics_keep_the_last_record_of_a_step_and_name_a_bad_line(tmp_path):
    run = ModelDir(tmp_path)
    with pytest.raises(ModelDirError, match=r"metrics\.jsonl does not exist"):
        run.read_metrics()
    records = [
        {"step": 1, "kind": "train", "loss": 3.0},
        {"step": 2, "kind": "train", "loss": 2.0},
        {"step": 2, "kind": "eval", "accuracy": 50.0},
        {"step": 2, "kind": "train", "loss": 1.5},  # the resumed run logged step 2 again
    ]
    for record in records:
        run.append_metrics(record)
    assert run.read_metrics() == records
    assert [r["loss"] for r in run.metrics("train")] == [3.0, 1.5]
    assert run.metrics("eval") == [{"step": 2, "kind": "eval", "accuracy": 50.0}]
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "kind"\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 5 is not a JSON object"):
        run.read_metrics()
    assert run.read_metrics(skip_bad_lines=True) == records


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "prompts" / "best.npy"
    model_dir.write_atomic(path, b"old", "the prompt export")

    def interrupted(*args):
        raise KeyboardInterrupt  # e.g. Ctrl-C between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model_dir.write_atomic(path, b"new content", "the prompt export")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.npy"]


def test_a_full_disk_is_named_with_the_file_and_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "best.json"
    path.write_text("{}")

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(CheckpointWriteError, match=r"best\.json.*earlier best\.json is unchanged"):
        ModelDir(tmp_path).write_best(1, "loss", 0.5)
    assert path.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]


def test_written_files_get_the_mode_open_would_give(tmp_path):
    umask = os.umask(0o022)
    try:
        written = ModelDir(tmp_path).write_config("MODEL_DIR = 'x'\n")
    finally:
        os.umask(umask)
    assert written == tmp_path / "config.gin"
    assert written.stat().st_mode & 0o777 == 0o644


def test_checkpoint_steps_are_the_complete_orbax_steps(tmp_path):
    from prompt_tuning.train import checkpoints  # noqa: PLC0415

    checkpointer = checkpoints.TrainCheckpointer(tmp_path, keep=None)
    try:
        for step in (2, 10):
            checkpointer.save(step, {"step": np.int32(step), "x": np.ones(3)}, {"step": step})
    finally:
        checkpointer.close()
    (tmp_path / "checkpoints" / f"12{model_dir.TMP_SUFFIX}-1").mkdir()  # an unfinished save
    run = ModelDir(tmp_path)
    assert run.checkpoint_steps() == [2, 10]
    assert run.checkpoint_steps(best=True) == []  # best/ holds no step
    assert {"meta", "state"} <= {p.name for p in run.step_dir(10).iterdir()}  # the items


def test_a_real_run_has_the_documented_layout(tiny_run):  # noqa: F811
    run = ModelDir(tiny_run)  # 6 steps, saves every 2, evaluates every 3, KEEP=None
    assert run.has_config() and run.prompt_module_name() == "Prompt"
    assert sorted(run.exported_steps()) == [2, 4, 6]
    assert run.checkpoint_steps() == [2, 4, 6]
    best = run.read_best()
    assert best["step"] in (3, 6) and run.checkpoint_steps(best=True) == [best["step"]]
    assert run.run_export() == run.best_export() == tiny_run / "prompts" / "best.npy"
    assert [r["step"] for r in run.metrics("eval")] == [3, 6]
    assert [r["step"] for r in run.metrics("train")] == [1, 2, 3, 4, 5, 6]
