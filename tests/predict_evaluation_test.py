"""Tests of `prompt_tuning.predict.evaluation`: seqio metrics, rank classification, best step."""

import functools
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.parallel import partitioning
from prompt_tuning.predict import evaluation
from prompt_tuning.predict import predictor as predictor_lib
from prompt_tuning.predict.predictor import Predictor
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5.network import EncoderDecoder
from prompt_tuning.train.model import PromptModel
from tasks import metrics as task_metrics

LENGTHS = {"inputs": 12, "targets": 4}
INPUTS = ["alpha", "bravo", "charlie", "delta", "echo"]
VOCAB = seqio.ByteVocabulary()


@pytest.fixture(scope="module")
def model_and_params():
    module = EncoderDecoder(t5_config.tiny(vocab_size=512), prompt=Prompt(length=3))
    model = PromptModel(module)
    params = jax.jit(lambda r: nn.unbox(model.init_boxed(r, 4, 4)))(jax.random.key(0))
    jitted = {
        "greedy": jax.jit(model.predict_batch),
        "beam": jax.jit(lambda p, b: model.predict_batch(p, b, method="beam", beam_size=2)),
        "logits": jax.jit(model.logits),
    }
    return model, params, jitted


def _register(name, targets, metric_fns, postprocess_fn=None):
    """Registers a 'validation'-only byte-level task with fixed inputs and `targets`."""
    seqio.TaskRegistry.remove(name)

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices({"inputs": INPUTS, "targets": list(targets)})

    features = {
        "inputs": seqio.Feature(VOCAB, add_eos=True, required=False),
        "targets": seqio.Feature(VOCAB, add_eos=True),
    }
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=features,
        postprocess_fn=postprocess_fn,
        metric_fns=metric_fns,
    )


def _input_batch(texts):
    """Model batch built by hand: bytes + 3, EOS (1), zero padding."""
    enc = np.zeros((len(texts), LENGTHS["inputs"]), np.int32)
    for i, text in enumerate(texts):
        ids = [b + 3 for b in text.encode()] + [1]
        enc[i, : len(ids)] = ids
    dec = np.ones((len(texts), LENGTHS["targets"]), np.int32)
    return {"encoder_input_tokens": enc, "decoder_target_tokens": dec}


def _hand_predictions(jitted, params, method="greedy"):
    tokens = jitted[method](params, _input_batch(INPUTS))
    return [VOCAB.decode(list(map(int, row))).strip() for row in np.asarray(tokens)]


def _exact_and_length(targets, predictions):
    return {
        "exact": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)])),
        "pred_len": float(np.mean([len(p) for p in predictions])),
    }


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_evaluator_metrics_match_hand_computed_from_predict_batch(model_and_params, method):
    model, params, jitted = model_and_params
    predictions = _hand_predictions(jitted, params, method)
    # Plant: examples 0, 2, 4 have the model's own prediction as target, 1 and 3 a different one.
    targets = [p if i % 2 == 0 else p + "#" for i, p in enumerate(predictions)]
    _register("e2_planted", targets, [_exact_and_length], lambda s, **kw: s.strip())
    evaluator = evaluation.Evaluator(
        "e2_planted", LENGTHS, model, batch_size=2, decode_method=method, beam_size=2
    )
    metrics = evaluator.evaluate(params, step=0)
    assert metrics["e2_planted/exact"] == pytest.approx(60.0)
    assert metrics["e2_planted/pred_len"] == pytest.approx(np.mean([len(p) for p in predictions]))
    assert metrics["mean"] == pytest.approx((60.0 + metrics["e2_planted/pred_len"]) / 2)
    assert "e2_planted/rank_accuracy" not in metrics  # generative: no labels registered


def test_task_mean_ignores_invalid_counts_and_prefers_the_tasks_own_mean():
    # T5-style metrics of a task (tasks.metrics): a score, a count of invalid predictions and the
    # task's own mean. The count must not enter the early-stopping value.
    assert evaluation.task_mean(
        {"accuracy": 70.0, "invalid_predictions": 5, "mean_of_metrics": 70.0}
    ) == pytest.approx(70.0)
    assert evaluation.task_mean({"f1": 80.0, "accuracy": 60.0, "invalid_predictions": 2}) == (
        pytest.approx(70.0)
    )
    assert np.isnan(evaluation.task_mean({"invalid_predictions": 2}))


def test_evaluator_mean_of_a_t5_classification_task(model_and_params):
    model, params, jitted = model_and_params
    predictions = _hand_predictions(jitted, params)
    labels = ("yes", "no")
    # Targets are labels; the model's random predictions are almost surely no label (invalid).
    targets = [labels[i % 2] for i in range(len(INPUTS))]
    invalid = sum(p not in labels for p in predictions)
    assert invalid > 0  # what makes the old mean (which averaged in the count) differ
    hits = sum(p == t for p, t in zip(predictions, targets))

    def to_index(text, example=None, is_target=False):
        del example, is_target
        return labels.index(text.strip()) if text.strip() in labels else -1

    metric_fn = task_metrics.mean_of_metrics(task_metrics.accuracy)
    _register("e2_t5_classes", targets, [metric_fn], to_index)
    evaluator = evaluation.Evaluator(
        "e2_t5_classes", LENGTHS, model, batch_size=4, rank_classification=False
    )
    metrics = evaluator.evaluate(params, step=0)
    accuracy = 100.0 * hits / len(INPUTS)
    assert metrics["e2_t5_classes/invalid_predictions"] == invalid
    assert metrics["e2_t5_classes/accuracy"] == pytest.approx(accuracy)
    assert metrics["mean"] == pytest.approx(accuracy)


def _hand_label_scores(logits_fn, params, labels):
    """[B, C] summed log-likelihoods from teacher-forced logits (not `decoding.score`)."""
    batch = _input_batch(INPUTS)
    scores = np.zeros((len(INPUTS), len(labels)))
    for c, label in enumerate(labels):
        ids = [b + 3 for b in label.encode()] + [1]
        target = np.zeros((len(INPUTS), LENGTHS["targets"]), np.int32)
        target[:, : len(ids)] = ids
        full = {
            "encoder_input_tokens": batch["encoder_input_tokens"],
            "decoder_target_tokens": target,
            "decoder_input_tokens": np.pad(target[:, :-1], ((0, 0), (1, 0))),
        }
        logp = jax.nn.log_softmax(logits_fn(params, full), axis=-1)  # [B, S, V]
        picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
        scores[:, c] = np.asarray((picked * (target > 0)).sum(axis=1))
    return scores


def test_rank_classification_picks_argmax_of_hand_scores(model_and_params):
    model, params, jitted = model_and_params
    labels = ("yes", "no", "ok")
    choices = _hand_label_scores(jitted["logits"], params, labels).argmax(axis=1)
    # Targets: the rank choice for the first three examples, another label for the rest.
    targets = [labels[c] if i < 3 else labels[(c + 1) % 3] for i, c in enumerate(choices)]
    # The labels come from the task itself, as T5 declares them: bound into its postprocessor.
    postprocess = functools.partial(_strip, label_classes=list(labels))
    _register("e2_ranked", targets, [_exact_and_length], postprocess)
    evaluator = evaluation.Evaluator("e2_ranked", LENGTHS, model, batch_size=4)
    np.testing.assert_array_equal(evaluator.rank_choices(params, "e2_ranked"), choices)
    metrics = evaluator.evaluate(params, step=1)
    assert metrics["e2_ranked/rank_accuracy"] == pytest.approx(60.0)
    assert metrics["e2_ranked/rank_exact"] == pytest.approx(60.0)
    expected_len = np.mean([len(labels[c]) for c in choices])
    assert metrics["e2_ranked/rank_pred_len"] == pytest.approx(expected_len)


def _strip(text, example=None, is_target=False, label_classes=()):
    del example, is_target, label_classes
    return text.strip()


def test_rank_classification_true_without_labels_is_an_error_or_takes_given_labels(
    model_and_params,
):
    model, params, jitted = model_and_params
    _register("e2_unlabelled", ["no"] * len(INPUTS), [_exact_and_length])
    with pytest.raises(ValueError, match="e2_unlabelled.*no label strings"):
        evaluation.Evaluator("e2_unlabelled", LENGTHS, model, 2, rank_classification=True)
    # Another team's task without declared labels ranks the LABELS it is given.
    labels = ("yes", "no")
    evaluator = evaluation.Evaluator("e2_unlabelled", LENGTHS, model, 4, labels=labels)
    choices = _hand_label_scores(jitted["logits"], params, labels).argmax(axis=1)
    np.testing.assert_array_equal(evaluator.rank_choices(params, "e2_unlabelled"), choices)


def test_training_and_evaluation_do_not_import_the_tasks_package():
    code = (
        "import sys\n"
        "from prompt_tuning.predict import evaluation, inference, predictor\n"
        "from prompt_tuning.train import trainer\n"
        "from prompt_tuning import eval, infer\n"
        "assert 'tasks' not in sys.modules, sorted(m for m in sys.modules if m.startswith('tasks'))"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_tokenize_labels_pads_and_rejects_long_labels():
    tokens = evaluation.tokenize_labels(["ab", "c"], VOCAB, 4)
    np.testing.assert_array_equal(tokens, [[100, 101, 1, 0], [102, 1, 0, 0]])
    with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
        evaluation.tokenize_labels(["abcd"], VOCAB, 4)


def test_label_batch_pairs_every_example_with_every_label():
    batch = {"encoder_input_tokens": np.array([[5, 1], [6, 1]]), "task_ids": np.array([3, 4])}
    out = evaluation.label_batch(batch, np.array([[7, 1, 0], [8, 9, 1]]))
    np.testing.assert_array_equal(out["encoder_input_tokens"][:, 0], [5, 5, 6, 6])
    np.testing.assert_array_equal(out["task_ids"], [3, 3, 4, 4])
    np.testing.assert_array_equal(out["decoder_target_tokens"][:, 0], [7, 8, 7, 8])
    np.testing.assert_array_equal(out["decoder_input_tokens"][1], [0, 8, 9])
    np.testing.assert_array_equal(out["decoder_loss_weights"][0], [1, 1, 0])


def test_select_metric_default_name_and_bare_name():
    metrics = {"a/accuracy": 80.0, "b/accuracy": 60.0, "b/f1": 10.0, "mean": 55.0}
    assert evaluation.select_metric(metrics) == 55.0
    assert evaluation.select_metric(metrics, "b/f1") == 10.0
    assert evaluation.select_metric(metrics, "accuracy") == 70.0
    with pytest.raises(KeyError, match="available"):
        evaluation.select_metric(metrics, "bleu")


def test_best_step_is_earliest_maximum_or_minimum():
    history = {100: {"mean": 50.0}, 200: {"mean": 70.0}, 300: {"mean": 70.0}, 400: {"mean": 40.0}}
    assert evaluation.best_step(history) == 200
    assert evaluation.best_step(history, mode="min") == 400
    with pytest.raises(ValueError, match="evaluate at least one"):
        evaluation.best_step({})


def test_params_on_a_mesh_give_the_single_device_results(model_and_params):
    model, params, jitted = model_and_params
    mesh = partitioning.make_mesh(1)  # All 8 test devices on the "data" axis.
    sharded = jax.device_put(params, partitioning.replicated(mesh))
    batch = dict(_input_batch(INPUTS[:4] * 2), decoder_input_tokens=np.ones((8, 4), np.int32))
    predictor = Predictor(model)
    placed = predictor_lib.place_batch(sharded, batch)
    assert placed["encoder_input_tokens"].sharding.spec == partitioning.data_sharding(mesh).spec
    np.testing.assert_array_equal(
        predictor.predict(sharded, batch), jitted["greedy"](params, batch)
    )
    np.testing.assert_allclose(
        predictor.score(sharded, batch), jax.jit(model.score_batch)(params, batch), atol=1e-5
    )
