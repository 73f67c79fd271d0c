"""tools/prompt_io.py: export equals the run's prompts, folding, export -> import -> evaluate."""

import numpy as np
import pytest

from prompt_tuning import eval as eval_main
from prompt_tuning import infer, prompts
from prompt_tuning.export.prompt_io import PromptIOError
from prompt_tuning.predict import inference
from prompt_tuning.train import gin_utils
from tests import tools_fixtures
from tests.tools_fixtures import frozen_checkpoint, tiny_run  # noqa: F401 (pytest fixtures)
from tools import prompt_io


def test_export_copies_latest_step_and_best_prompts(tiny_run, tmp_path):  # noqa: F811
    latest = prompt_io.main(
        ["export", f"--model_dir={tiny_run}", f"--output={tmp_path / 'latest.npy'}"]
    )
    np.testing.assert_array_equal(np.load(tmp_path / "latest.npy"), latest.prompt)
    np.testing.assert_array_equal(latest.prompt, np.load(tiny_run / "prompts" / "step_6.npy"))
    best = prompt_io.main(
        ["export", f"--model_dir={tiny_run}", "--best", f"--output={tmp_path / 'best.npy'}"]
    )
    np.testing.assert_array_equal(best.prompt, np.load(tiny_run / "prompts" / "best.npy"))


def test_export_from_checkpoint_folds_the_saved_params(tiny_run, tmp_path):  # noqa: F811
    result = prompt_io.main(
        [
            "export",
            f"--model_dir={tiny_run}",
            "--step=4",
            "--from_checkpoint",
            f"--output={tmp_path / 'p4.npy'}",
        ]
    )
    np.testing.assert_array_equal(result.prompt, np.load(tiny_run / "prompts" / "step_4.npy"))
    assert not np.array_equal(result.prompt, np.load(tiny_run / "prompts" / "step_6.npy"))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 5 \(kept: \[2, 4, 6\]"):
        prompt_io.main(
            ["export", f"--model_dir={tiny_run}", "--step=5", "--from_checkpoint", "--output=x"]
        )


def _eval_and_scores(model_dir, checkpoint, out, with_metrics=True):
    """Metrics (python -m prompt_tuning.eval) and per-example target scores (infer) of a run."""
    common = [
        f"--gin_file={tools_fixtures.MODEL_GIN}",
        f"--gin_file={tools_fixtures.PLAIN_PROMPT_GIN}",
        f"--gin.MIXTURE_OR_TASK_NAME='{tools_fixtures.TASK}'",
        f"--gin.TASK_FEATURE_LENGTHS={tools_fixtures.LENGTHS!r}",
        f"--gin.PROMPT_LENGTH={tools_fixtures.PROMPT_LENGTH}",
        f"--gin.INITIAL_CHECKPOINT_PATH='{checkpoint}'",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.BATCH_SIZE=16",
    ]
    metrics = None
    if with_metrics:
        with gin_utils.fresh_gin():
            metrics = eval_main.main(
                [
                    *common,
                    "--gin_file=gin_configs/runs/prompt_eval.gin",
                    "--gin.inference.evaluate.num_examples=16",
                    f"--gin.EVAL_OUTPUT_DIR='{out.parent / out.stem}'",
                ]
            )
    with gin_utils.fresh_gin():
        infer.main(
            [
                *common,
                "--gin_file=gin_configs/runs/prompt_infer.gin",
                f"--gin.INFER_OUTPUT_PATH='{out}'",
                "--gin.INFER_SCORE='target'",
                "--gin.inference.infer.num_examples=16",
            ]
        )
    return metrics, [r["score"] for r in inference.read_jsonl(out)]


def test_export_import_evaluate_round_trip(tiny_run, frozen_checkpoint, tmp_path):  # noqa: F811
    exported = tmp_path / "p.npy"
    prompt_io.main(["export", f"--model_dir={tiny_run}", f"--output={exported}"])
    imported = tmp_path / "imported"
    prompt_io.main(
        ["import", f"--prompt={exported}", f"--model_dir={imported}", f"--config={tiny_run}"]
    )
    np.testing.assert_array_equal(np.load(imported / "prompts" / "step_0.npy"), np.load(exported))
    run = gin_utils.read_run_config(imported)
    assert run.model_dir == imported
    assert type(run.model.prompt) is prompts.Prompt and run.model.prompt.length == 4
    assert run.initial_checkpoint_path == frozen_checkpoint
    original = _eval_and_scores(tiny_run, frozen_checkpoint, tmp_path / "a.jsonl")
    again = _eval_and_scores(imported, frozen_checkpoint, tmp_path / "b.jsonl")
    assert again[0] == original[0]
    np.testing.assert_allclose(again[1], original[1], rtol=1e-6)
    # The scores see the prompt: an earlier step's prompt scores differently.
    other = tmp_path / "other"
    prompt_io.main(
        [
            "import",
            f"--prompt={tiny_run / 'prompts' / 'step_2.npy'}",
            f"--model_dir={other}",
            f"--config={tiny_run}",
        ]
    )
    _, scores = _eval_and_scores(other, frozen_checkpoint, tmp_path / "c.jsonl", False)
    assert np.max(np.abs(np.asarray(scores) - original[1])) > 1e-3


def test_import_checks_the_shape_and_refuses_an_existing_run(tiny_run, tmp_path):  # noqa: F811
    prompt = tiny_run / "prompts" / "step_6.npy"
    target = tmp_path / "new"
    with pytest.raises(PromptIOError, match=r"shape \(4, 32\) but .* = \(5, 32\)"):
        prompt_io.main(
            [
                "import",
                f"--prompt={prompt}",
                f"--model_dir={target}",
                f"--config={tiny_run}",
                "--gin.PROMPT_LENGTH=5",
            ]
        )
    assert not target.exists()
    with pytest.raises(PromptIOError, match="not empty"):
        prompt_io.main(["import", f"--prompt={prompt}", f"--model_dir={tiny_run}"])
    with pytest.raises(PromptIOError, match="import needs the model"):
        prompt_io.main(["import", f"--prompt={prompt}", f"--model_dir={target}"])


def test_export_of_multi_task_and_instance_dependent_prompts(tmp_path):
    folder = tmp_path / "run" / "prompts"
    folder.mkdir(parents=True)
    table = np.random.default_rng(0).normal(size=(3, 4, 8)).astype(np.float32)  # [N, P, H]
    np.save(folder / "step_2.npy", table)
    run = f"--model_dir={tmp_path / 'run'}"
    one = prompt_io.main(["export", run, "--task_id=1", f"--output={tmp_path / 't1.npy'}"])
    np.testing.assert_array_equal(np.load(tmp_path / "t1.npy"), table[1])
    assert one.prompt.shape == (4, 8)
    prompt_io.main(["export", run, f"--output={tmp_path / 'all.npy'}"])
    np.testing.assert_array_equal(np.load(tmp_path / "all.npy"), table)
    with pytest.raises(PromptIOError, match="--task_id 3: .* holds 3 tasks"):
        prompt_io.main(["export", run, "--task_id=3", f"--output={tmp_path / 'x.npy'}"])
    generator = {"prompt": table[0], "generator/up_kernel": table[:2]}
    np.savez(folder / "step_5.npz", **generator)  # IDPG: the latest export is its parameters
    with pytest.raises(PromptIOError, match="instance-dependent .* no \\[P, H\\] prompt"):
        prompt_io.main(["export", run, f"--output={tmp_path / 'x.npy'}"])
    prompt_io.main(["export", run, f"--output={tmp_path / 'idpg.npz'}"])
    with np.load(tmp_path / "idpg.npz") as written:
        assert set(written.files) == set(generator)
        np.testing.assert_array_equal(written["generator/up_kernel"], table[:2])
