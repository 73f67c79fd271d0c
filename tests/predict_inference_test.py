"""Tests of `predict.inference` and the eval/infer entry points with their gin files."""

import json

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning import eval as eval_main
from prompt_tuning import infer as infer_main
from prompt_tuning.predict import inference
from prompt_tuning.predict.predictor import Predictor
from prompt_tuning.prompts.bank import PromptBank
from prompt_tuning.prompts.instance import InstancePrompt
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import decoding
from prompt_tuning.t5.network import EncoderDecoder
from prompt_tuning.train import checkpoints
from prompt_tuning.train.model import PromptModel

LENGTHS = {"inputs": 12, "targets": 4}
INPUTS = ["alpha", "bravo", "charlie", "delta", "echo"]
TARGETS = ["a", "bb", "", "dd", "e"]
VOCAB = seqio.ByteVocabulary()
TASK = "e2_infer"
# The tiny model of gin_configs/models/t5_1_1_tiny.gin, with a 3-token prompt.
GIN_CONFIG = t5_config.tiny(vocab_size=384)


def _register():
    seqio.TaskRegistry.remove(TASK)

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices({"inputs": INPUTS, "targets": TARGETS})

    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={
            "inputs": seqio.Feature(VOCAB, add_eos=True, required=False),
            "targets": seqio.Feature(VOCAB, add_eos=True),
        },
        metric_fns=[lambda targets, predictions: {"n": float(len(predictions))}],
    )
    return seqio.get_mixture_or_task(TASK)


@pytest.fixture(scope="module")
def setup():
    model = PromptModel(EncoderDecoder(t5_config.tiny(vocab_size=512), prompt=Prompt(length=3)))
    params = jax.jit(lambda r: nn.unbox(model.init_boxed(r, 4, 4)))(jax.random.key(0))
    jitted = {"predict": jax.jit(model.predict_batch), "logits": jax.jit(model.logits)}
    return model, params, _register(), jitted


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _hand_tokens(texts, length):
    out = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        ids = [b + 3 for b in text.encode()] + [1]
        out[i, : len(ids)] = ids
    return out


def _hand_log_likelihood(jitted, params, targets):
    """Summed log p(targets) from teacher-forced logits, [B]."""
    batch = {
        "encoder_input_tokens": _hand_tokens(INPUTS, LENGTHS["inputs"]),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    }
    logp = jax.nn.log_softmax(jitted["logits"](params, batch), axis=-1)  # [B, S, V]
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return np.asarray((picked * (targets > 0)).sum(axis=1))


def test_jsonl_holds_inputs_predictions_targets_and_scores(setup, tmp_path):
    model, params, task, jitted = setup
    predictor = Predictor(model)
    records = inference.predict_task(predictor, params, task, LENGTHS, 2, score="prediction")
    path = tmp_path / "out" / "predictions.jsonl"
    assert inference.write_jsonl(records, path) == len(INPUTS)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    batch = {
        "encoder_input_tokens": _hand_tokens(INPUTS, LENGTHS["inputs"]),
        "decoder_target_tokens": np.ones((len(INPUTS), LENGTHS["targets"]), np.int32),
    }
    tokens = np.asarray(decoding.pad_after_eos(np.asarray(jitted["predict"](params, batch)), 1))
    expected_scores = _hand_log_likelihood(jitted, params, tokens)
    for i, line in enumerate(lines):
        assert set(line) == {"task", "inputs", "prediction", "target", "score"}
        assert (line["task"], line["inputs"], line["target"]) == (TASK, INPUTS[i], TARGETS[i])
        assert line["prediction"] == VOCAB.decode(tokens[i].tolist())
        assert line["score"] == pytest.approx(expected_scores[i], abs=1e-4)


def test_target_scores_and_rank_classified_predictions(setup):
    model, params, task, jitted = setup
    predictor = Predictor(model)
    records = list(inference.predict_task(predictor, params, task, LENGTHS, 4, score="target"))
    expected = _hand_log_likelihood(jitted, params, _hand_tokens(TARGETS, LENGTHS["targets"]))
    np.testing.assert_allclose([r["score"] for r in records], expected, atol=1e-4)
    labels = ("x", "yy")
    ranked = inference.predict_task(predictor, params, task, LENGTHS, 4, labels=labels)
    label_ll = np.stack(
        [
            _hand_log_likelihood(jitted, params, _hand_tokens([lab] * len(INPUTS), 4))
            for lab in labels
        ],
        axis=1,
    )
    assert [r["prediction"] for r in ranked] == [labels[c] for c in label_ll.argmax(axis=1)]


def test_bad_prompt_file_shape_names_both_shapes(tmp_path):
    model = PromptModel(EncoderDecoder(GIN_CONFIG, prompt=Prompt(length=3)))
    path = tmp_path / "prompt.npy"
    np.save(path, np.zeros((5, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(5, 32\).*\(3, 32\)"):
        inference.load_params(model, LENGTHS, prompt_file=str(path))
    bank = PromptModel(EncoderDecoder(GIN_CONFIG, prompt=PromptBank(num_prompts=2, length=3)))
    with pytest.raises(ValueError, match=r"one prompt \(5, 32\) .* holds 2 prompts \(2, 3, 32\)"):
        inference.read_prompt_file(path, bank)
    with pytest.raises(ValueError, match="PROMPT_FILE .* or MODEL_DIR"):
        inference.load_params(model, LENGTHS)


def test_load_params_reads_prompt_file_and_run_checkpoints(tmp_path):
    model = PromptModel(EncoderDecoder(GIN_CONFIG, prompt=Prompt(length=3)))
    prompts = {name: np.full((3, 32), value, np.float32) for name, value in [("a", 1), ("b", 2)]}
    np.save(tmp_path / "a.npy", prompts["a"])
    params, step = inference.load_params(model, LENGTHS, prompt_file=str(tmp_path / "a.npy"))
    assert step is None
    np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"], prompts["a"])
    checkpoints.save_trained_params(
        tmp_path / "run", 10, {"encoder": {"prompt": {"prompt": prompts["a"]}}}, {}
    )
    run = checkpoints.TrainCheckpointer(tmp_path / "run", keep=1)
    state = {"step": np.int32(5), "params": {"encoder": {"prompt": {"prompt": prompts["b"]}}}}
    run.save(5, state, {"step": 5}, best=True)
    run.close()
    for checkpoint, name, expected_step in [("latest", "a", 10), ("best", "b", 5)]:
        params, step = inference.load_params(
            model, LENGTHS, model_dir=str(tmp_path / "run"), checkpoint=checkpoint
        )
        assert step == expected_step
        np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"], prompts[name])


def _gin_args(run_file, *bindings):
    return [
        "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
        "--gin_file=gin_configs/prompts/prompt_tuning_random_uniform.gin",
        f"--gin_file=gin_configs/runs/{run_file}",
        f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        "--gin.PROMPT_LENGTH=3",
        "--gin.BATCH_SIZE=4",  # padded to 8 rows: the 8 test devices form the data axis
        *bindings,
    ]


def test_eval_and_infer_entry_points_run_their_gin_files(setup, tmp_path, clean_gin):
    np.save(tmp_path / "p.npy", np.full((3, 32), 0.1, np.float32))
    np.save(tmp_path / "q.npy", np.full((3, 32), -0.1, np.float32))
    metrics = eval_main.main(
        _gin_args(
            "prompt_eval.gin",
            f"--gin.PROMPT_FILE='{tmp_path / 'p.npy'}'",
            f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'",
        )
    )
    written = json.loads((tmp_path / "eval" / "metrics_validation.json").read_text())
    assert written["metrics"] == metrics
    assert metrics[f"{TASK}/n"] == len(INPUTS)
    gin.clear_config()
    files = [str(tmp_path / "p.npy"), str(tmp_path / "q.npy")]  # A two-prompt ensemble.
    count = infer_main.main(
        _gin_args(
            "prompt_infer.gin",
            f"--gin.PROMPT_FILE={files}",
            f"--gin.INFER_OUTPUT_PATH='{tmp_path / 'infer.jsonl'}'",
        )
    )
    assert count == len(INPUTS)
    records = inference.read_jsonl(tmp_path / "infer.jsonl")
    assert [r["inputs"] for r in records] == INPUTS


def test_missing_task_name_stops_before_any_work(clean_gin, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_main.main(_gin_args("prompt_eval.gin")[:3])
    assert exit_info.value.code == 2
    assert "MIXTURE_OR_TASK_NAME" in capsys.readouterr().err


def test_load_params_reads_an_instance_dependent_prompt_export(tmp_path):
    # An IDPG run exports its generator and bias as .npz (prompt_files); PROMPT_FILE loads them.
    model = PromptModel(EncoderDecoder(GIN_CONFIG, prompt=InstancePrompt(3, hidden_dim=4)))
    shapes = jax.eval_shape(lambda: nn.unbox(model.init_boxed(jax.random.key(0), 1, 1)))
    rng = np.random.default_rng(0)
    exported = {
        "/".join(str(k.key) for k in path): rng.normal(size=x.shape).astype(np.float32)
        for path, x in jax.tree_util.tree_leaves_with_path(shapes["encoder"]["prompt"])
    }
    np.savez(tmp_path / "idpg.npz", **exported)
    params, _ = inference.load_params(model, LENGTHS, prompt_file=str(tmp_path / "idpg.npz"))
    prompt = params["encoder"]["prompt"]
    np.testing.assert_array_equal(prompt["generator"]["up_kernel"], exported["generator/up_kernel"])
    np.testing.assert_array_equal(prompt["prompt"], exported["prompt"])
    np.save(tmp_path / "bias.npy", exported["prompt"])  # the bias alone is not a prompt file
    with pytest.raises(ValueError, match="not a prompt table"):
        inference.load_params(model, LENGTHS, prompt_file=str(tmp_path / "bias.npy"))


def test_read_jsonl_names_the_file_and_line_that_is_not_json(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "loss": 0.\n')  # cut off mid-record
    with pytest.raises(ValueError, match=rf"{path}, line 2 is not a JSON object"):
        inference.read_jsonl(path)
