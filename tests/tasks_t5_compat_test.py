"""Living beside the original T5 package: no shared names, T5's formats byte for byte.

The names T5 0.9.4 registers are kept here as data, so the collision check needs no `t5`. Where
`t5` is importable (`make test` installs it, `--no-deps`), our T5-format tasks are run next to T5's
own tasks on the same records; otherwise the golden strings below (T5's output for hand-written
records, checked against T5 whenever it is importable) stand in for it.
"""

import functools
import importlib
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks  # noqa: F401  (registers our tasks)
from tasks import naming

REPO = pathlib.Path(__file__).resolve().parents[1]


def _t5_importable() -> bool:
    try:
        importlib.import_module("t5.data")
    except ImportError:
        return False
    return True


HAS_T5 = _t5_importable()

# `seqio.TaskRegistry.names()` / `MixtureRegistry.names()` after `import t5.data.tasks,
# t5.data.mixtures` (t5 0.9.4).
T5_TASKS = frozenset(
    """
c4_noclean_v020_unsupervised c4_prefix_lm_objective_decoder_architecture
c4_prefix_lm_objective_encoder_decoder_architecture c4_realnewslike_v020_unsupervised
c4_v020_unsupervised c4_v220_full_lm c4_v220_iid_denoising c4_v220_prefix_lm
c4_v220_span_corruption c4_webtextlike_v020_unsupervised cnn_dailymail_v002 dpr_v001_simple
dpr_v001_simple_1_sentinel glue_ax_v002 glue_cola_v002 glue_mnli_matched_v002
glue_mnli_mismatched_v002 glue_mnli_v002 glue_mrpc_v002 glue_qnli_v002 glue_qqp_v002
glue_rte_v002 glue_sst2_v002 glue_stsb_v002 glue_wnli_v002 glue_wnli_v002_simple_eval squad_v010
squad_v010_allanswers squad_v010_allanswers_span squad_v010_context_free super_glue_axb_v102
super_glue_axb_v102_1_sentinel super_glue_axg_v102 super_glue_axg_v102_1_sentinel
super_glue_boolq_v102 super_glue_boolq_v102_1_sentinel super_glue_cb_v102
super_glue_cb_v102_1_sentinel super_glue_copa_v102 super_glue_copa_v102_1_sentinel
super_glue_multirc_v102 super_glue_multirc_v102_1_sentinel super_glue_record_v102
super_glue_record_v102_1_sentinel super_glue_rte_v102 super_glue_rte_v102_1_sentinel
super_glue_wic_v102 super_glue_wic_v102_1_sentinel super_glue_wsc_v102_simple_1_sentinel_eval
super_glue_wsc_v102_simple_1_sentinel_train super_glue_wsc_v102_simple_eval
super_glue_wsc_v102_simple_train trivia_qa_v010 wikipedia_20190301.en_v003_unsupervised
wmt14_ende_v003 wmt14_enfr_v003 wmt15_enfr_v003 wmt16_enro_v003 wmt19_ende_v003
wmt_t2t_ende_v003
""".split()
)
T5_MIXTURES = frozenset(
    """
all_equal all_mix all_proportional en_mix glue_mnli_and_dev_v002 glue_v002_proportional
large_supervised_equal large_supervised_proportional large_translation_equal
leave_one_out_cnn_dailymail_v002 leave_one_out_glue_v002_proportional
leave_one_out_squad_v010_allanswers leave_one_out_super_glue_v102_proportional
leave_one_out_wmt15_enfr_v003 leave_one_out_wmt16_enro_v003 leave_one_out_wmt_t2t_ende_v003
squad_trivia_qa_equal super_glue_v102_proportional super_glue_v102_proportional_sentinel
wsc_dpr_simple_proportional
""".split()
)


def _record(**fields):
    return fields


# T5 task -> (hand-written TFDS record, T5's inputs, T5's targets). Records carry exactly the
# TFDS features T5's preprocessors read (T5 sorts feature names when it is not given them).
GOLDEN = {
    "glue_cola_v002": (
        _record(sentence="Him ran.", label=0, idx=1),
        "cola sentence: Him ran.",
        "unacceptable",
    ),
    "glue_sst2_v002": (
        _record(sentence="a fine film", label=1, idx=2),
        "sst2 sentence: a fine film",
        "positive",
    ),
    "glue_mrpc_v002": (
        _record(sentence1="A b.", sentence2="B a.", label=1, idx=3),
        "mrpc sentence1: A b. sentence2: B a.",
        "equivalent",
    ),
    "glue_qqp_v002": (
        _record(question1="Why?", question2="How?", label=0, idx=4),
        "qqp question1: Why? question2: How?",
        "not_duplicate",
    ),
    "glue_stsb_v002": (
        _record(sentence1="A", sentence2="B", label=3.31, idx=5),
        "stsb sentence1: A sentence2: B",
        "3.4",
    ),
    "glue_mnli_v002": (
        _record(premise="P.", hypothesis="H.", label=2, idx=6),
        "mnli hypothesis: H. premise: P.",
        "contradiction",
    ),
    "glue_mnli_matched_v002": (
        _record(premise="P m.", hypothesis="H m.", label=0, idx=7),
        "mnli hypothesis: H m. premise: P m.",
        "entailment",
    ),
    "glue_mnli_mismatched_v002": (
        _record(premise="P mm.", hypothesis="H mm.", label=1, idx=8),
        "mnli hypothesis: H mm. premise: P mm.",
        "neutral",
    ),
    "glue_qnli_v002": (
        _record(question="Q?", sentence="S.", label=1, idx=9),
        "qnli question: Q? sentence: S.",
        "not_entailment",
    ),
    "glue_rte_v002": (
        _record(sentence1="A cat sat.", sentence2="A cat.", label=0, idx=10),
        "rte sentence1: A cat sat. sentence2: A cat.",
        "entailment",
    ),
    "glue_wnli_v002": (
        _record(sentence1="W1.", sentence2="W2.", label=1, idx=11),
        "wnli sentence1: W1. sentence2: W2.",
        "entailment",
    ),
    "glue_ax_v002": (
        _record(premise="P ax.", hypothesis="H ax.", label=-1, idx=12),
        "mnli hypothesis: H ax. premise: P ax.",
        "<unk>",
    ),
    "super_glue_boolq_v102": (
        _record(passage="Water is wet.", question="is water wet", label=1, idx=13),
        "boolq passage: Water is wet. question: is water wet",
        "True",
    ),
    "super_glue_cb_v102": (
        _record(premise="P cb.", hypothesis="H cb.", label=2, idx=14),
        "cb hypothesis: H cb. premise: P cb.",
        "neutral",
    ),
    "super_glue_copa_v102": (
        _record(
            premise="It rained.", choice1="Sun.", choice2="Wet.", question="effect", label=1, idx=15
        ),
        "copa choice1: Sun. choice2: Wet. premise: It rained. question: effect",
        "choice2",
    ),  # fmt: skip
    "super_glue_multirc_v102": (
        _record(
            paragraph="P<br>one <b>two</b>.",
            question="Q?",
            answer="A.",
            label=1,
            idx={"paragraph": 1, "question": 2, "answer": 3},
        ),
        "multirc question: Q? answer: A. paragraph: P one two.",
        "True",
    ),  # fmt: skip
    "super_glue_record_v102": (
        _record(
            passage="Paris is big.\n@highlight\nIt is old\n@highlight\nReally",
            query="@placeholder is a city.",
            entities=["Paris", "Rome"],
            answers=["Paris"],
            idx={"passage": 0, "query": 1},
        ),
        "record query: @placeholder is a city. entities: Paris, Rome passage: Paris is big. It is "
        "old. Really",
        "Paris",
    ),  # fmt: skip
    "super_glue_rte_v102": (
        _record(premise="P rte.", hypothesis="H rte.", label=1, idx=16),
        "rte hypothesis: H rte. premise: P rte.",
        "not_entailment",
    ),
    "super_glue_wic_v102": (
        _record(
            sentence1="A bank.",
            sentence2="A river bank.",
            word="bank",
            start1=2,
            start2=8,
            end1=6,
            end2=12,
            label=0,
            idx=17,
        ),
        "wic sentence1: A bank. sentence2: A river bank. word: bank",
        "False",
    ),  # fmt: skip
    "super_glue_axb_v102": (
        _record(sentence1="S one.", sentence2="S two.", label=0, idx=18),
        "rte hypothesis: S two. premise: S one.",
        "entailment",
    ),
    "super_glue_axg_v102": (
        _record(premise="P axg.", hypothesis="H axg.", label=1, idx=19),
        "rte hypothesis: H axg. premise: P axg.",
        "not_entailment",
    ),
    "super_glue_wsc_v102_simple_train": (
        _record(
            text="Mitchell asked Tom if he could lend some money.",
            span1_text="Tom",
            span1_index=2,
            span2_text="he",
            span2_index=4,
            label=1,
            idx=20,
        ),
        "wsc: Mitchell asked Tom if *he* could lend some money.",
        "Tom",
    ),  # fmt: skip
    "super_glue_wsc_v102_simple_eval": (
        _record(
            text="The cup hit the bowl because it was heavy .",
            span1_text="the bowl",
            span1_index=3,
            span2_text="it",
            span2_index=6,
            label=0,
            idx=21,
        ),
        "wsc: The cup hit the bowl because *it* was heavy .",
        "the bowl",
    ),  # fmt: skip
    "squad_v010_allanswers": (
        _record(
            id="q1",
            title="t",
            context="Paris is in France.",
            question="Where is Paris?",
            answers={"text": ["France", "in France"], "answer_start": [12, 9]},
        ),
        "question: Where is Paris ? context: Paris is in France . ",
        "France",
    ),  # fmt: skip
}
SPLIT = {"glue_ax_v002": "test", "super_glue_axb_v102": "test", "super_glue_axg_v102": "test"}
SPLIT.update(super_glue_wsc_v102_simple_train="train")


def _text_steps(task: seqio.Task) -> list:
    """A task's preprocessors before tokenization (the text cast)."""
    steps = []
    for step in task.preprocessors:
        if getattr(step, "func", step) is seqio.preprocessors.tokenize:
            return steps
        steps.append(step)
    raise AssertionError(f"{task.name} has no tokenize step")


def _texts(task_name: str, dataset: tf.data.Dataset) -> list[tuple[str, str]]:
    """(inputs, targets) strings after the text cast of a registered task."""
    for step in _text_steps(seqio.TaskRegistry.get(task_name)):
        dataset = step(dataset)
    return [(ex["inputs"].decode(), ex["targets"].decode()) for ex in dataset.as_numpy_iterator()]


def _dataset(record: dict) -> tf.data.Dataset:
    nested = {k: tf.ragged.constant([v]) if isinstance(v, list) else [v] for k, v in record.items()}
    if "answers" in record and isinstance(record["answers"], dict):
        nested["answers"] = {k: tf.ragged.constant([v]) for k, v in record["answers"].items()}
    if isinstance(record.get("idx"), dict):
        nested["idx"] = {k: [v] for k, v in record["idx"].items()}
    return tf.data.Dataset.from_tensor_slices(nested).map(_dense)


def _dense(example):
    return tf.nest.map_structure(
        lambda t: t.to_tensor() if isinstance(t, tf.RaggedTensor) else t, example
    )


def _remove_task_word(text: str) -> str:
    """google-research/prompt-tuning's `remove_first_text_token`: drops `^[^ ]* ` once."""
    return re.sub(r"^[^ ]* ", "", text, count=1)


def test_naming_scheme_marks_every_t5_derived_name():
    assert naming.taskless("glue_rte_v002") == "taskless_glue_rte_v002"
    assert naming.t5format("glue_rte_v002") == "glue_rte_v002_t5format"
    registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    for t5_name in GOLDEN:
        assert {naming.taskless(t5_name), naming.t5format(t5_name)} <= registered, t5_name


@pytest.mark.parametrize("t5_name", sorted(GOLDEN))
def test_t5format_and_taskless_variants_match_t5_golden_strings(t5_name):
    record, inputs, targets = GOLDEN[t5_name]
    assert _texts(naming.t5format(t5_name), _dataset(record)) == [(inputs, targets)]
    taskless = inputs if t5_name.startswith("squad") else _remove_task_word(inputs)
    assert _texts(naming.taskless(t5_name), _dataset(record)) == [(taskless, targets)]


# The import checks run in a fresh interpreter: imports happen once per process. It registers
# another team's task, imports T5's tasks and mixtures first when `t5` is importable, then ours.
_FRESH_SCRIPT = textwrap.dedent("""
    import json, os, sys, seqio, tensorflow_datasets as tfds
    def other_team(split, shuffle_files, seed=None):
        import tensorflow as tf
        return tf.data.Dataset.from_tensor_slices({"inputs": [[4, 5]], "targets": [[6]]})
    vocab = seqio.PassThroughVocabulary(8)
    seqio.TaskRegistry.add(
        "other_team_task",
        source=seqio.FunctionDataSource(other_team, splits=["train"]),
        preprocessors=[],
        output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)},
    )
    theirs = {}
    if sys.argv[1] == "t5":
        import t5.data, t5.data.tasks, t5.data.mixtures
        theirs = {n: seqio.get_mixture_or_task(n) for n in ("glue_rte_v002",
                  "squad_v010_allanswers", "glue_v002_proportional")}
    def state():
        task = seqio.get_mixture_or_task("other_team_task")
        data = task.get_dataset(None, split="train", shuffle=False, try_in_mem_cache=False)
        rows = [{k: v.tolist() for k, v in e.items()} for e in data.as_numpy_iterator()]
        return dict(
            env=dict(os.environ), data_dir=tfds.core.constants.get_default_data_dir(),
            other=repr(task.output_features), cache_dirs=list(seqio.get_global_cache_dirs()),
            examples=repr(rows),
            t5_vocab=[repr(p.output_features["targets"].vocabulary.sentencepiece_model_file)
                      for n, p in theirs.items() if hasattr(p, "output_features")],
        )
    names = lambda: set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    before, registered = state(), names()
    import tasks, prompt_tuning.prompts, prompt_tuning.t5x.network  # noqa
    from prompt_tuning.predict import evaluation, inference
    from prompt_tuning.train import trainer  # noqa
    after = state()
    unchanged = {k: before[k] == after[k] for k in before}
    unchanged["t5_providers"] = all(seqio.get_mixture_or_task(n) is p for n, p in theirs.items())
    print(json.dumps(dict(
        ours=sorted(names() - registered), unchanged=unchanged, examples=after["examples"],
        t5_vocab=after["t5_vocab"], mixture_tasks=len(
            seqio.get_mixture_or_task("taskless_glue_v002_proportional").tasks),
    )))
""")


def _python(script: str, *args: str) -> subprocess.CompletedProcess:
    """Runs `script` in a fresh interpreter that imports this checkout's packages."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO, env=env
    )


@pytest.fixture(scope="module")
def fresh_registry() -> dict:
    """What a fresh `import tasks` (and `prompt_tuning`) registers, and whether globals moved."""
    out = _python(_FRESH_SCRIPT, "t5" if HAS_T5 else "no_t5")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_registered_name_is_one_of_t5s(fresh_registry):
    ours = set(fresh_registry["ours"])
    assert "taskless_glue_rte_v002" in ours and "other_team_task" not in ours
    assert not ours & (T5_TASKS | T5_MIXTURES)


def test_importing_us_changes_no_global_of_other_teams(fresh_registry):
    # Environment, TFDS data dir, seqio cache dirs, another team's task and (with `t5`) T5's
    # tasks, mixtures and vocabulary are untouched.
    assert fresh_registry["unchanged"] == dict.fromkeys(fresh_registry["unchanged"], True)
    assert fresh_registry["examples"] == repr([{"inputs": [4, 5], "targets": [6]}])
    assert fresh_registry["mixture_tasks"] == 8


@pytest.mark.skipif(not HAS_T5, reason="the original t5 package is not installed")
def test_t5_then_us_import_in_one_process(fresh_registry):
    import t5.data  # noqa: PLC0415

    # T5's tasks imported first; ours after them; T5's keep T5's vocabulary, not ours.
    assert fresh_registry["t5_vocab"] == [repr(t5.data.DEFAULT_SPM_PATH)] * 3  # 2 tasks, 1 mixture
    assert fresh_registry["unchanged"]["t5_providers"] is True


@pytest.fixture(scope="module")
def t5_registry():
    """Imports T5's tasks and mixtures after ours (the other order runs in a subprocess above).

    T5's names are removed again afterwards, so that no other test file sees them.
    """
    if not HAS_T5:
        pytest.skip("the original t5 package is not installed")
    tasks_before = set(seqio.TaskRegistry.names())
    mixtures_before = set(seqio.MixtureRegistry.names())
    importlib.import_module("t5.data.tasks")
    importlib.import_module("t5.data.mixtures")
    added = set(seqio.TaskRegistry.names()) - tasks_before
    yield added
    for name in added:
        seqio.TaskRegistry.remove(name)
    for name in set(seqio.MixtureRegistry.names()) - mixtures_before:
        seqio.MixtureRegistry.remove(name)


def test_us_then_t5_import_in_one_process(t5_registry):
    assert set(GOLDEN) <= t5_registry <= T5_TASKS
    assert set(seqio.MixtureRegistry.names()) >= T5_MIXTURES


@pytest.mark.parametrize("t5_name", sorted(GOLDEN))
def test_golden_strings_are_t5s_output(t5_registry, t5_name):
    record, inputs, targets = GOLDEN[t5_name]
    assert _texts(t5_name, _dataset(record)) == [(inputs, targets)]


def _mock_records(t5_name: str, num_examples: int = 4) -> list[dict]:
    source = seqio.TaskRegistry.get(t5_name).source
    split = SPLIT.get(t5_name, "validation")
    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE):
        return list(source.get_dataset(split=split, shuffle=False).take(num_examples))


# WSC's mock records have random pronoun indices, which T5 asserts on; the goldens cover WSC.
MOCKED = sorted(name for name in GOLDEN if "_wsc_" not in name)


@pytest.mark.parametrize("t5_name", MOCKED)
def test_t5format_equals_t5_on_mock_records(t5_registry, t5_name):
    records = _mock_records(t5_name)
    dataset = functools.partial(
        tf.data.Dataset.from_generator,
        lambda: iter(records),
        output_signature=tf.nest.map_structure(
            lambda x: tf.TensorSpec([None] * x.shape.rank, x.dtype), records[0]
        ),
    )
    theirs = _texts(t5_name, dataset())
    assert theirs and _texts(naming.t5format(t5_name), dataset()) == theirs
    if not t5_name.startswith("squad"):
        expected = [(_remove_task_word(i), t) for i, t in theirs]
        assert _texts(naming.taskless(t5_name), dataset()) == expected


def _postprocessed(task: seqio.Task, texts: list[str], is_target: bool) -> list:
    return [task.postprocess_fn(text, example={}, is_target=is_target) for text in texts]


def _metrics(task: seqio.Task, targets: list, predictions: list) -> dict[str, float]:
    out = {}
    for metric_fn in task.predict_metric_fns:
        out.update(metric_fn(targets, predictions))
    return out


# T5 tasks whose metrics read postprocessed labels or scores (T5 gives the AX sets none).
SCORED = sorted(
    name
    for name in GOLDEN
    if not any(k in name for k in ("_ax", "_wsc_", "multirc", "record", "squad"))
)


@pytest.mark.parametrize("t5_name", SCORED)
def test_postprocessing_and_metrics_equal_t5s_on_random_predictions(t5_registry, t5_name):
    theirs, ours = seqio.TaskRegistry.get(t5_name), seqio.TaskRegistry.get(naming.t5format(t5_name))
    rng = np.random.default_rng(len(t5_name))
    labels = list(tasks.label_strings(naming.t5format(t5_name)))
    targets = list(rng.choice(labels, 40))
    predictions = list(rng.choice(labels + ["maybe"], 40))  # "maybe": an invalid prediction
    for is_target, texts in ((True, targets), (False, predictions)):
        assert _postprocessed(ours, texts, is_target) == _postprocessed(theirs, texts, is_target)
    args = [
        _postprocessed(theirs, texts, t) for t, texts in ((True, targets), (False, predictions))
    ]
    expected, got = _metrics(theirs, *args), _metrics(ours, *args)
    assert expected and set(expected) <= set(got)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, err_msg=key)


def test_squad_metric_equals_t5s(t5_registry):
    theirs = seqio.TaskRegistry.get("squad_v010_allanswers")
    ours = seqio.TaskRegistry.get("squad_v010_allanswers_t5format")
    targets = [["the cat", "a cat"], ["Paris , France"], ["1990"], ["blue sky"]]
    predictions = ["cat", "Paris", "in 1990", "green"]
    assert _metrics(ours, targets, predictions) == pytest.approx(
        _metrics(theirs, targets, predictions)
    )
