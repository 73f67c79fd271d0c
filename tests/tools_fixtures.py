"""Tiny training runs for the tests of the analysis tools in tools/ (import it; not a conftest).

`make_run` trains a prompt on a tiny random frozen T5 in-process through the gin entry point
(`gin_utils.run_main(trainer.train, ...)`, as `python -m prompt_tuning.train` does), so MODEL_DIR
gets everything a real run leaves: config.gin (with INITIAL_CHECKPOINT_PATH pointing at a T5X
checkpoint written by `save_t5x_checkpoint`), metrics.jsonl, orbax checkpoints, prompts/step_N.npy,
best/ and best.json. About 5-10 s per run on a 2-core CPU.

    from tests.tools_fixtures import frozen_checkpoint, tiny_run  # noqa: F401 (pytest fixtures)

    def test_x(tiny_run, frozen_checkpoint): ...

The fixtures are module-scoped but memoized here, so the test modules of one pytest process
share each run.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import struct
from collections.abc import Sequence

import gin
import numpy as np
import pytest

from prompt_tuning.t5 import checkpoints as t5_checkpoints
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.train import gin_utils, trainer

TASK = "builtin_keyword"
LENGTHS = {"inputs": 32, "targets": 4}
PROMPT_LENGTH = 4
PLAIN_PROMPT_GIN = "gin_configs/prompts/prompt_tuning_random_uniform.gin"
RANK_PROBE_GIN = "gin_configs/prompts/rank_probe.gin"
MODEL_GIN = "gin_configs/models/t5_1_1_tiny.gin"
RUN_GIN = "gin_configs/runs/prompt_finetune.gin"
VOCAB_SIZE = 512


def tiny_config() -> t5_config.T5Config:
    """The frozen model of every fixture run: `t5_config.tiny(vocab_size=512)`, no dropout."""
    return t5_config.tiny(vocab_size=VOCAB_SIZE, dropout_rate=0.0)


def make_frozen_checkpoint(directory: str | pathlib.Path, seed: int = 7) -> str:
    """Writes a random tiny T5 as a legacy T5X checkpoint `directory/checkpoint_0`.

    Weights are drawn with numpy (no model initialization to compile): kernels and embeddings
    N(0, 1/fan_in) (embedding N(0, 1)), layer-norm scales 1, relative-position biases N(0, 0.1).

    Args:
      directory: an existing folder.
      seed: numpy seed.

    Returns:
      The checkpoint path (what INITIAL_CHECKPOINT_PATH points at).
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in t5_checkpoints.expected_shapes(tiny_config()).items():
        if name.endswith("/scale"):
            flat[name] = np.ones(shape, np.float32)
        elif name.endswith("rel_embedding"):
            flat[name] = (0.1 * rng.normal(size=shape)).astype(np.float32)
        elif name == "token_embedder/embedding":
            flat[name] = rng.normal(size=shape).astype(np.float32)
        else:
            flat[name] = (rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32)
    path = pathlib.Path(directory) / "checkpoint_0"
    t5_checkpoints.save_t5x_checkpoint(t5_checkpoints.unflatten(flat), path)
    return str(path)


def make_run(
    model_dir: str | pathlib.Path,
    checkpoint: str | None,
    *,
    prompt_gin: str = PLAIN_PROMPT_GIN,
    seed: int = 0,
    steps: int = 6,
    save_period: int = 2,
    eval_period: int = 3,
    eval_steps: int = 1,
    bindings: Sequence[str] = (),
) -> pathlib.Path:
    """Trains a tiny prompt run in-process through the gin entry point.

    Args:
      model_dir: MODEL_DIR (created).
      checkpoint: INITIAL_CHECKPOINT_PATH of the frozen model (None: random from the seed).
      prompt_gin: the prompt's gin file.
      seed: RANDOM_SEED (prompt initialization and data order).
      steps: TRAIN_STEPS.
      save_period: SAVE_PERIOD (every save exports prompts/step_N.npy).
      eval_period: EVAL_PERIOD.
      eval_steps: EVAL_STEPS (batches of 8 validation examples).
      bindings: extra `--gin.NAME=VALUE` flags (without the `--gin.` prefix).

    Returns:
      The MODEL_DIR path.
    """
    model_dir = pathlib.Path(model_dir)
    argv = [
        f"--gin_file={MODEL_GIN}",
        f"--gin_file={prompt_gin}",
        f"--gin_file={RUN_GIN}",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}",
        f"--gin.INITIAL_CHECKPOINT_PATH={checkpoint!r}",
        f"--gin.PROMPT_LENGTH={PROMPT_LENGTH}",
        f"--gin.TRAIN_STEPS={steps}",
        "--gin.BATCH_SIZE=8",
        "--gin.DROPOUT_RATE=0.0",
        f"--gin.RANDOM_SEED={seed}",
        f"--gin.SAVE_PERIOD={save_period}",
        "--gin.KEEP=None",
        f"--gin.EVAL_PERIOD={eval_period}",
        f"--gin.EVAL_STEPS={eval_steps}",
        "--gin.trainer.train.log_period=1",
        "--gin.trainer.train.num_devices=1",
        *(f"--gin.{binding}" for binding in bindings),
    ]
    gin.clear_config()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gin_utils.run_main(trainer.train, argv)
    finally:
        gin.clear_config()
    return model_dir


def assert_png(path: str | pathlib.Path) -> None:
    """Checks a PNG file: the signature, an IHDR chunk of a non-trivial image, the IEND chunk."""
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    assert data[-8:-4] == b"IEND"


# Runs shared by every test module of one pytest process (the base temp folder is session-wide).
_MEMO: dict[str, object] = {}


def _memo(name: str, make):
    if name not in _MEMO:
        _MEMO[name] = make()
    return _MEMO[name]


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory) -> str:
    """A random tiny T5 as a T5X checkpoint (one per pytest process)."""
    return _memo("frozen", lambda: make_frozen_checkpoint(tmp_path_factory.mktemp("frozen")))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, frozen_checkpoint) -> pathlib.Path:
    """A 6-step plain-prompt run: prompts at steps 2, 4, 6; evaluations at 3 and 6."""
    return _memo("tiny", lambda: make_run(tmp_path_factory.mktemp("run"), frozen_checkpoint))


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory, frozen_checkpoint) -> list[pathlib.Path]:
    """Three 100-step plain-prompt runs of seeds 0, 1, 2 on the same frozen model (no eval).

    At 100 steps the prompts have learnt the task to different degrees (rank accuracies of
    roughly 55-90% on 32 validation examples), so their metrics and predictions differ.
    """

    def make():
        return [
            make_run(
                tmp_path_factory.mktemp(f"seed{seed}"),
                frozen_checkpoint,
                seed=seed,
                steps=100,
                save_period=100,
                eval_period=0,
            )
            for seed in range(3)
        ]

    return _memo("seeds", make)


@pytest.fixture(scope="module")
def rank_probe_run(tmp_path_factory, frozen_checkpoint) -> pathlib.Path:
    """A 10-step RankProbePrompt run (r = P = 8, Sigma starting at 0.3, trainable bases U and V),
    checkpoints at 5 and 10."""
    bindings = [
        "PROMPT_LENGTH=8",
        "prompts.RankProbePrompt.sigma_init=0.3",
        "prompts.RankProbePrompt.trainable_bases=True",
    ]
    return _memo(
        "rank_probe",
        lambda: make_run(
            tmp_path_factory.mktemp("rank_probe"),
            frozen_checkpoint,
            prompt_gin=RANK_PROBE_GIN,
            steps=10,
            save_period=5,
            eval_period=0,
            bindings=bindings,
        ),
    )
