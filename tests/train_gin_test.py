"""Every gin file of models/ and runs/ parses and builds its model; the CLI runs smoke.gin."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import gin
import pytest

from prompt_tuning.train import gin_utils

ROOT = pathlib.Path(__file__).resolve().parents[1]
# T5 1.1 and LM-adapted T5 1.1; the other families' files (and from_checkpoint.gin) are checked
# against T5X's gin files in t5_families_gin_test.py.
MODELS = sorted(
    p
    for p in (ROOT / "gin_configs" / "models").glob("*.gin")
    if p.stem.startswith(("t5_1_1_", "lm_adapted_t5_1_1_"))
)
PROMPT = "gin_configs/prompts/prompt_tuning_random_uniform.gin"
RUN = "gin_configs/runs/prompt_finetune.gin"
# (emb_dim, encoder layers) of the public T5 1.1 sizes; tiny is the test model.
SIZES = {
    "small": (512, 8),
    "base": (768, 12),
    "large": (1024, 24),
    "xl": (2048, 24),
    "xxl": (4096, 24),
    "tiny": (32, 2),
    "pretrained": (128, 3),  # the embedded tiny T5 (README's model card)
}


_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def read_scalars(logdir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the scalars in the TensorBoard event files under `logdir`."""
    import tensorflow as tf  # noqa: PLC0415

    values: dict[str, dict[int, float]] = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                values.setdefault(value.tag, {})[event.step] = number
    return values


def _build(macro: str):
    """Evaluates a macro bound to `@configurable()` (gin's own evaluation of the reference)."""
    return gin.query_parameter(f"%{macro}").scoped_configurable_fn()


def test_model_files_cover_every_size():
    names = {p.stem for p in MODELS}
    for size in ("small", "base", "large", "xl", "xxl"):
        assert {f"t5_1_1_{size}", f"lm_adapted_t5_1_1_{size}"} <= names
    assert "t5_1_1_tiny" in names


@pytest.mark.parametrize("model_file", MODELS, ids=lambda p: p.stem)
def test_model_file_with_run_file_builds_the_model(model_file):
    assert model_file.read_text().startswith("# ")  # the header
    gin_utils.parse_gin_flags(
        [
            f"--gin_file={model_file}",
            f"--gin_file={PROMPT}",
            f"--gin_file={RUN}",
            "--gin.MODEL_DIR='/tmp/unused'",
            "--gin.MIXTURE_OR_TASK_NAME='builtin_keyword'",
            "--gin.TRAIN_STEPS=1130000",
        ]
    )
    gin_utils.check_macros(["MODEL", "INITIAL_CHECKPOINT_PATH", "NUM_ENCODER_LAYERS"])
    model = _build("MODEL")
    emb_dim, layers = SIZES[model_file.stem.rsplit("_", 1)[-1]]
    assert (model.config.emb_dim, model.config.num_encoder_layers) == (emb_dim, layers)
    assert gin.query_parameter("%NUM_ENCODER_LAYERS") == layers
    assert model.config.dropout_rate == 0.1  # the run file's DROPOUT_RATE
    assert model.prompt.length == 100
    checkpoint = gin.query_parameter("%INITIAL_CHECKPOINT_PATH")
    if model_file.stem == "t5_1_1_tiny":
        assert checkpoint is None
    elif model_file.stem == "t5_1_1_tiny_pretrained":
        path = _build("INITIAL_CHECKPOINT_PATH")
        assert path.endswith("prompt_tuning/pretrained/t5_tiny/checkpoint_2500")
        assert os.path.exists(os.path.join(path, "checkpoint"))
    else:
        lm = "lm100k_" if model_file.stem.startswith("lm_adapted") else ""
        assert f"/t5_1_1_{lm}{model_file.stem.rsplit('_', 1)[-1]}/" in checkpoint


def test_run_file_binds_the_paper_optimizer():
    gin_utils.parse_gin_flags(
        [
            "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
            f"--gin_file={PROMPT}",
            f"--gin_file={RUN}",
        ]
    )
    assert gin.query_parameter("%LEARNING_RATE") == 0.3
    assert gin.query_parameter("optimizers.adafactor.decay_rate") == 0.8
    assert gin.query_parameter("optimizers.adafactor.weight_decay_rate") == 1e-5
    assert gin.query_parameter("optimizers.adafactor.multiply_by_parameter_scale") is False
    assert gin.query_parameter("optimizers.adafactor.step_offset") == 0
    assert gin.query_parameter("%BATCH_SIZE") == 32
    # TRAIN_STEPS is absolute (it includes the checkpoint's steps), so it has no default: as in
    # T5X's runs/finetune.gin.
    with pytest.raises(ValueError, match="Gin macro TRAIN_STEPS is required"):
        gin_utils.check_macros(["TRAIN_STEPS"])


def test_class_label_prompt_gets_the_task_labels_from_the_run_file():
    gin_utils.parse_gin_flags(
        [
            "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
            "--gin_file=gin_configs/prompts/prompt_tuning_class_labels.gin",
            f"--gin_file={RUN}",
            "--gin.MIXTURE_OR_TASK_NAME='builtin_keyword'",
        ]
    )
    assert tuple(_build("LABELS")) == ("no", "yes")  # tasks.label_strings("builtin_keyword")


def test_missing_macro_is_named_before_anything_runs(tmp_path):
    argv = [
        "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
        f"--gin_file={PROMPT}",
        f"--gin_file={RUN}",
        "--gin.MIXTURE_OR_TASK_NAME='builtin_keyword'",
    ]
    with pytest.raises(ValueError, match="Gin macro MODEL_DIR is required.*--gin.MODEL_DIR"):
        gin_utils.run_main(lambda: pytest.fail("ran without MODEL_DIR"), argv)
    gin.clear_config()
    with pytest.raises(ValueError, match="Gin macro (DROPOUT_RATE|PROMPT) is required"):
        gin_utils.run_main(lambda: None, ["--gin_file=gin_configs/models/t5_1_1_tiny.gin"])
    with pytest.raises(ValueError, match="Unknown argument '--gin_fil=x'"):
        gin_utils.parse_gin_flags(["--gin_fil=x"])


def test_smoke_command_trains_evaluates_and_writes_outputs(tmp_path):
    model_dir = tmp_path / "demo"
    command = [
        sys.executable,
        "-m",
        "prompt_tuning.train",
        "--gin_file=gin_configs/runs/smoke.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TRAIN_STEPS=4",
        "--gin.EVAL_PERIOD=2",
        "--gin.SAVE_PERIOD=2",
        "--gin.EVAL_STEPS=1",
        "--gin.PROMPT_LENGTH=5",
    ]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "step 4/4 | loss" in done.stdout
        and "eval @ step 4: builtin_keyword/accuracy" in done.stdout
    )
    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["train", "eval", "train", "eval"]
    assert (model_dir / "prompts" / "step_4.npy").exists()
    assert (model_dir / "config.gin").read_text().count("builtin_keyword") >= 1
    evals = [r for r in records if r["kind"] == "eval"]
    best = json.loads((model_dir / "best.json").read_text())
    top = max(evals, key=lambda r: (r["mean"], -r["step"]))  # the earliest of the best
    assert best == {"step": top["step"], "metric": "mean", "value": top["mean"]}
    assert (model_dir / "prompts" / "best.npy").exists()
    # TensorBoard event files (clu metric writers) hold the logged loss of both steps.
    scalars = read_scalars(model_dir / "tensorboard")
    train = [r for r in records if r["kind"] == "train"]
    assert scalars["train/loss"] == pytest.approx({r["step"]: r["loss"] for r in train}, rel=1e-6)
    assert set(scalars["eval/builtin_keyword/accuracy"]) == {2, 4}


_OUTSIDE_THE_CHECKOUT = """
import pathlib, sys
import gin
import gin_configs, prompt_tuning
from prompt_tuning.train import gin_utils
site = pathlib.Path(sys.argv[1])
assert pathlib.Path(prompt_tuning.__file__).is_relative_to(site), prompt_tuning.__file__
assert gin_utils.gin_search_root() == str(site), gin_utils.gin_search_root()
gin_utils.parse_gin_flags([
    "--gin_file=gin_configs/models/t5_1_1_tiny_pretrained.gin",
    "--gin_file=gin_configs/prompts/prompt_tuning_class_labels.gin",
    "--gin_file=gin_configs/runs/prompt_finetune.gin",
    "--gin.MIXTURE_OR_TASK_NAME='builtin_sentiment'", "--gin.MODEL_DIR='run'",
    "--gin.TRAIN_STEPS=3500",
])
gin_utils.check_macros(["MODEL", "MODEL_DIR", "LABELS"])
checkpoint = gin.query_parameter("%INITIAL_CHECKPOINT_PATH").scoped_configurable_fn()
assert pathlib.Path(checkpoint).is_relative_to(site), checkpoint
model = gin.query_parameter("%MODEL").scoped_configurable_fn()
print(model.config.emb_dim, model.prompt.length)
"""


def test_gin_files_ship_with_the_package_and_resolve_outside_the_checkout(tmp_path):
    # pt-train from an installed package: build the wheel from a copy of the sources, unpack it
    # as a site-packages folder and parse the README's gin files from another working directory
    # with the checkout off sys.path.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "prompt_tuning", "tasks", "gin_configs"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": _CACHES} if copy is shutil.copytree else {}))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path / "wheel"), str(source)], check=True)
    (wheel,) = (tmp_path / "wheel").glob("prompt_tuning-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run(
        [sys.executable, "-c", _OUTSIDE_THE_CHECKOUT, str(site)],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["128", "100"]
