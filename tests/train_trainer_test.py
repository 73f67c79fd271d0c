"""The training loop on a tiny T5: frozen weights untouched, resume, meshes, bad input, NaN stop."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from prompt_tuning import pretrained, prompts
from prompt_tuning.model_dir import ModelDir
from prompt_tuning.t5 import checkpoints as t5_checkpoints
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network
from prompt_tuning.train import checkpoints, optimizers, trainer
from prompt_tuning.train.model import PromptModel

TASK = "builtin_keyword"
LENGTHS = {"inputs": 64, "targets": 4}


def tiny_module(prompt_length: int = 4, dropout_rate: float = 0.0) -> network.EncoderDecoder:
    config = t5_config.tiny(vocab_size=512, dropout_rate=dropout_rate)
    return network.EncoderDecoder(config, prompt=prompts.Prompt(length=prompt_length))


def run(model_dir, steps, **overrides) -> trainer.TrainResult:
    kwargs = dict(
        model=tiny_module(),
        model_dir=str(model_dir),
        mixture_or_task_name=TASK,
        mixture_or_task_module="tasks.builtin",
        task_feature_lengths=LENGTHS,
        train_steps=steps,
        batch_size=8,
        log_period=1,
        save_period=5,
        keep=2,
        num_devices=1,
    )
    kwargs.update(overrides)
    return trainer.train(**kwargs)


def prompt_of(result: trainer.TrainResult) -> np.ndarray:
    return np.asarray(result.trainable["encoder"]["prompt"]["prompt"])


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory):
    """A T5X checkpoint of a random tiny T5 (what INITIAL_CHECKPOINT_PATH points at)."""
    boxed = PromptModel(tiny_module()).init_boxed(jax.random.key(7), 8, 4)
    _, frozen = optimizers.split_params(nn.unbox(boxed))
    path = tmp_path_factory.mktemp("frozen") / "checkpoint_0"
    t5_checkpoints.save_t5x_checkpoint(jax.device_get(frozen), path)
    return str(path)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, frozen_checkpoint):
    """10 uninterrupted steps with dropout from the checkpoint."""
    model_dir = tmp_path_factory.mktemp("straight")
    result = run(
        model_dir,
        10,
        model=tiny_module(dropout_rate=0.1),
        initial_checkpoint_path=frozen_checkpoint,
    )
    return model_dir, result


def test_frozen_weights_stay_bit_identical_and_prompt_trains(straight, frozen_checkpoint, tmp_path):
    model_dir, result = straight
    _, loaded = t5_checkpoints.load_checkpoint(frozen_checkpoint)
    assert jax.tree.structure(result.frozen) == jax.tree.structure(loaded)
    for got, want in zip(jax.tree.leaves(result.frozen), jax.tree.leaves(loaded)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    # One step that changes nothing (TRAIN_STEPS must lie beyond the checkpoint's step 0).
    initial = run(
        tmp_path, 1, initial_checkpoint_path=frozen_checkpoint, optimizer=optax.set_to_zero()
    )
    moved = np.abs(prompt_of(result) - prompt_of(initial)).max()
    assert moved > 0.1  # Adafactor at 0.3 moves each entry ~0.3 per step
    assert result.step == 10
    exported = np.load(model_dir / "prompts" / "step_10.npy")
    np.testing.assert_array_equal(exported, prompt_of(result))
    losses = [m["loss"] for m in result.train_metrics]
    assert len(losses) == 10 and all(np.isfinite(losses))
    records = (model_dir / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 10 and '"kind": "train"' in records[0]


def test_resume_equals_uninterrupted_run(straight, frozen_checkpoint, tmp_path, capsys):
    _, uninterrupted = straight
    common = dict(model=tiny_module(dropout_rate=0.1), initial_checkpoint_path=frozen_checkpoint)
    first = run(tmp_path, 5, **common)
    assert first.step == 5
    resumed = run(tmp_path, 10, **common)
    assert resumed.step == 10
    np.testing.assert_allclose(prompt_of(resumed), prompt_of(uninterrupted), atol=1e-6)
    np.testing.assert_allclose(
        [m["loss"] for m in resumed.train_metrics],
        [m["loss"] for m in uninterrupted.train_metrics[5:]],
        atol=1e-6,
    )
    step, saved = checkpoints.load_trained_params(tmp_path)
    assert step == 10
    np.testing.assert_array_equal(saved["encoder"]["prompt"]["prompt"], prompt_of(resumed))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["10", "5"]
    capsys.readouterr()
    again = run(tmp_path, 10, **common)  # the same command once more: a finished run
    assert again.step == 10 and again.train_metrics == []
    np.testing.assert_array_equal(prompt_of(again), prompt_of(resumed))
    assert "already holds a run at step 10 (TRAIN_STEPS 10)" in capsys.readouterr().out


def test_eight_device_mesh_matches_one_device(straight, frozen_checkpoint, tmp_path):
    assert len(jax.devices()) == 8
    _, one_device = straight
    mesh = run(
        tmp_path,
        3,
        model=tiny_module(dropout_rate=0.1),
        initial_checkpoint_path=frozen_checkpoint,
        num_devices=None,
        num_partitions=4,
    )  # 2 x 4 ("data" x "model") mesh
    np.testing.assert_allclose(
        [m["loss"] for m in mesh.train_metrics],
        [m["loss"] for m in one_device.train_metrics[:3]],
        atol=1e-5,
    )


def test_bad_input_fails_before_training(tmp_path, frozen_checkpoint):
    with pytest.raises(ValueError, match="builtin_keywrd.*Close names: builtin_keyword"):
        run(tmp_path / "a", 2, mixture_or_task_name="builtin_keywrd")
    with pytest.raises(FileNotFoundError, match="INITIAL_CHECKPOINT_PATH .*no_such_checkpoint"):
        run(tmp_path / "b", 2, initial_checkpoint_path=str(tmp_path / "no_such_checkpoint"))
    bad_prompt = tmp_path / "prompt.npy"
    np.save(bad_prompt, np.zeros((3, 32), np.float32))
    with pytest.raises(
        ValueError, match=r"prompt.npy holds a prompt of shape \(3, 32\).*\(4, 32\)"
    ):
        run(tmp_path / "c", 2, prompt_file=str(bad_prompt))
    with pytest.raises(ValueError, match="BATCH_SIZE 6"):
        run(tmp_path / "d", 2, batch_size=6, num_devices=None)
    with pytest.raises(ValueError, match="eval_decode_method 'sample'.*'greedy'.*'beam'"):
        run(tmp_path / "e", 2, eval_period=1, eval_decode_method="sample")
    with pytest.raises(ValueError, match=r"NUM_PARTITIONS=8 does not divide the model's 4 .*heads"):
        run(tmp_path / "f", 2, num_devices=None, num_partitions=8)
    with pytest.raises(ValueError, match=r"NUM_PARTITIONS=3 does not divide the 8 devices"):
        run(tmp_path / "g", 2, num_devices=None, num_partitions=3)
    for name in "abcdefg":
        assert not (tmp_path / name / "checkpoints").exists()
        assert not (tmp_path / name / "metrics.jsonl").exists()


def test_prompt_file_start_and_bfloat16_frozen_weights(tmp_path):
    start = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    np.save(tmp_path / "start.npy", start)
    result = run(
        tmp_path / "run", 1, prompt_file=str(tmp_path / "start.npy"), frozen_dtype="bfloat16"
    )
    dtypes = {
        jax.tree_util.keystr(path).split("'")[-2]: leaf.dtype
        for path, leaf in jax.tree_util.tree_flatten_with_path(result.frozen)[0]
    }
    # FROZEN_DTYPE casts the matmul weights; norm scales and relative-position tables, used in
    # float32, stay float32.
    assert dtypes["kernel"] == dtypes["embedding"] == np.dtype("bfloat16")
    assert dtypes["scale"] == dtypes["rel_embedding"] == np.dtype("float32")
    assert np.isfinite(result.train_metrics[0]["loss"])
    # Adafactor's first step from the file: p1 = p0 - 0.3 * sign(g) - 1e-5 * p0.
    step = prompt_of(result) - start + 1e-5 * start
    np.testing.assert_allclose(np.abs(step), 0.3, rtol=1e-4)


def test_non_finite_update_stops_unsaved_and_keeps_last_good_checkpoint(tmp_path):
    # The rate is 0.3 * nan**floor(t / 4): 0.3 for the first 4 updates (nan**0 == 1), NaN for the
    # 5th. Step 5's loss (computed before that update) is finite, but its updated prompt is NaN:
    # the run must stop at step 5 without saving it, keeping checkpoint 4.
    exploding = optimizers.adafactor(
        learning_rate=0.3, decay_factor=float("nan"), steps_per_decay=4
    )
    with pytest.raises(
        FloatingPointError,
        match=r"At step 5 the updated trainable parameters hold NaN.*good checkpoint \(step 4\)",
    ):
        run(tmp_path, 8, optimizer=exploding, save_period=1, log_period=100)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "4"]
    assert not (tmp_path / "prompts" / "step_5.npy").exists()
    assert np.isfinite(np.load(tmp_path / "prompts" / "step_4.npy")).all()


def test_prompt_learns_the_builtin_keyword_task(tmp_path):
    # The embedded pretrained tiny T5, frozen, and a 20-token prompt trained 100 steps: only the
    # prompt can learn the task. (A random frozen T5 learns it or not depending on the data
    # order: 100 or 50 over seeds at 100 and 200 steps; the pretrained one reached 100 on seeds
    # 0, 1 and 2.) TRAIN_STEPS counts from the checkpoint's step, as in T5X.
    module = network.EncoderDecoder(pretrained.tiny_t5_config(), prompt=prompts.Prompt(length=20))
    checkpoint = pretrained.tiny_t5_checkpoint()
    first = int(checkpoint.rsplit("_", 1)[-1])
    result = run(
        tmp_path,
        first + 100,
        model=module,
        initial_checkpoint_path=checkpoint,
        batch_size=32,
        log_period=25,
        save_period=100,
        eval_period=100,
        eval_steps=2,
        best_metric="builtin_keyword/rank_accuracy",
    )
    losses = [m["loss"] for m in result.train_metrics]
    assert losses[-1] < 0.5 * losses[0]
    (metrics,) = result.eval_metrics
    assert metrics["builtin_keyword/accuracy"] >= 80.0  # chance: 50 (balanced yes/no)
    best = ModelDir(tmp_path).read_best()
    assert best == {
        "step": first + 100,
        "metric": "builtin_keyword/rank_accuracy",
        "value": metrics["builtin_keyword/rank_accuracy"],
    }
    assert (tmp_path / "prompts" / "best.npy").exists()


def test_rank_probe_logs_its_positive_diagonal_entries():
    probe = prompts.RankProbePrompt(length=4)
    trainable = {"encoder": {"prompt": {"sigma": np.array([0.5, -0.1, 2.0, 0.0])}}}
    assert trainer._prompt_diagnostics(probe, trainable) == {
        "prompt_positive_diagonal": 2.0,
        "prompt_negative_diagonal": 1.0,
        "prompt_rank": 4.0,
    }
    assert trainer._prompt_diagnostics(prompts.Prompt(length=4), trainable) == {}


def test_rank_probe_run_exports_its_folded_prompt(tmp_path):
    probe = prompts.RankProbePrompt(length=4)
    config = t5_config.tiny(vocab_size=512)
    result = run(tmp_path, 2, model=network.EncoderDecoder(config, prompt=probe), save_period=2)
    variables = {"params": result.trainable["encoder"]["prompt"]}
    exported = np.load(tmp_path / "prompts" / "step_2.npy")
    np.testing.assert_allclose(exported, probe.fold(variables, width=config.emb_dim), atol=1e-6)
