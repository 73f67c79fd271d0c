"""Golden examples for the GLUE/SuperGLUE text casts: hand-written records -> exact strings."""

import pytest
import tensorflow as tf

from tasks import preprocessors as p


@pytest.fixture(autouse=True)
def _fresh_counts():
    p.reset_dropped_counts()
    yield
    p.reset_dropped_counts()


def _dataset(records):
    """A dataset of dicts from records with the same keys (scalars only)."""
    return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in records] for k in records[0]})


def _strings(dataset, key):
    return [ex[key].numpy().decode() for ex in dataset]


RTE = ("entailment", "not_entailment")


def test_glue_text_without_and_with_task_name():
    records = [{"sentence1": "A cat sat.", "sentence2": "A cat.", "label": 1, "idx": 7}]
    out = list(p.glue_text(_dataset(records), source="glue/rte", label_names=RTE))
    assert out[0]["inputs"].numpy() == b"sentence1: A cat sat. sentence2: A cat."
    assert out[0]["targets"].numpy() == b"not_entailment"
    assert int(out[0]["idx"]) == 7
    prefixed = p.glue_text(_dataset(records), source="glue/rte", label_names=RTE, prefix="rte")
    assert _strings(prefixed, "inputs") == ["rte sentence1: A cat sat. sentence2: A cat."]


def test_glue_text_default_order_is_sorted_feature_names():
    # T5: all features but label/idx, sorted: "question" before "sentence".
    records = [{"sentence": "It is blue.", "question": "What colour?", "label": 0, "idx": 0}]
    out = p.glue_text(_dataset(records), source="glue/qnli", label_names=RTE, prefix="qnli")
    assert _strings(out, "inputs") == ["qnli question: What colour? sentence: It is blue."]


def test_glue_text_rename_reads_axb_as_rte():
    records = [{"sentence1": "P.", "sentence2": "H.", "label": 0, "idx": 3}]
    out = p.glue_text(
        _dataset(records),
        source="super_glue/axb",
        label_names=RTE,
        prefix="rte",
        rename={"premise": "sentence1", "hypothesis": "sentence2"},
    )
    assert _strings(out, "inputs") == ["rte hypothesis: H. premise: P."]


def test_glue_text_drops_and_counts_uncastable_records():
    records = [
        {"sentence1": "ok", "sentence2": "fine", "label": 0, "idx": 0},
        {"sentence1": "  ", "sentence2": "blank first", "label": 0, "idx": 1},
        {"sentence1": "test", "sentence2": "split", "label": -1, "idx": 2},
        {"sentence1": "bad", "sentence2": "label", "label": 2, "idx": 3},
        {"sentence1": "ok", "sentence2": "again", "label": 1, "idx": 4},
    ]
    out = list(p.glue_text(_dataset(records), source="glue/rte", label_names=RTE))
    assert [int(ex["idx"]) for ex in out] == [0, 4]
    assert p.dropped_counts() == {
        "glue/rte:empty_text": 1,
        "glue/rte:no_label": 1,
        "glue/rte:label_out_of_range": 1,
    }
    # Every pass over the data counts again; reset clears.
    list(p.glue_text(_dataset(records), source="glue/rte", label_names=RTE))
    assert p.dropped_counts()["glue/rte:no_label"] == 2
    p.reset_dropped_counts()
    assert p.dropped_counts() == {}


def test_glue_text_keep_unlabeled_writes_unk():
    records = [{"hypothesis": "H", "premise": "P", "label": -1, "idx": 0}]
    out = p.glue_text(
        _dataset(records),
        source="glue/ax",
        label_names=("entailment", "neutral", "contradiction"),
        keep_unlabeled=True,
    )
    assert _strings(out, "targets") == ["<unk>"]
    assert p.dropped_counts() == {}


@pytest.mark.parametrize(
    "score, target",
    [(1.8, "1.8"), (2.35, "2.4"), (0.0, "0.0"), (5.0, "5.0"), (4.91, "5.0"), (0.1, "0.0")],
)
def test_stsb_rounds_to_fifths(score, target):
    # round(score * 5) / 5 with round-half-to-even: 0.1 * 5 = 0.5 -> 0.
    records = [{"sentence1": "A", "sentence2": "B", "label": score, "idx": 0}]
    out = list(p.stsb_text(_dataset(records), prefix="stsb"))
    assert out[0]["targets"].numpy().decode() == target
    assert out[0]["inputs"].numpy() == b"stsb sentence1: A sentence2: B"


def test_stsb_drops_test_labels():
    records = [
        {"sentence1": "A", "sentence2": "B", "label": -1.0, "idx": 0},
        {"sentence1": "A", "sentence2": "B", "label": 5.5, "idx": 1},
    ]
    assert list(p.stsb_text(_dataset(records))) == []
    assert p.dropped_counts() == {"glue/stsb:no_label": 1, "glue/stsb:label_out_of_range": 1}


def test_multirc_removes_markup_and_keeps_ids():
    ds = tf.data.Dataset.from_tensors(
        {
            "paragraph": "<b>Sent 1: </b>Bob ran.<br><b>Sent 2: </b>He won.",
            "question": "Who won?",
            "answer": "Bob",
            "label": tf.constant(1, tf.int64),
            "idx": {"paragraph": 4, "question": 5, "answer": 6},
        }
    )
    out = list(p.multirc_text(ds))
    assert out[0]["inputs"].numpy() == (
        b"question: Who won? answer: Bob paragraph: Sent 1: Bob ran. Sent 2: He won."
    )
    assert out[0]["targets"].numpy() == b"True"
    got = [int(out[0][f"idx/{k}"]) for k in ("paragraph", "question", "answer")]
    assert got == [4, 5, 6]


def _record_dataset(records):
    spec = {
        "passage": tf.TensorSpec([], tf.string),
        "query": tf.TensorSpec([], tf.string),
        "entities": tf.TensorSpec([None], tf.string),
        "answers": tf.TensorSpec([None], tf.string),
        "idx": {"passage": tf.TensorSpec([], tf.int32), "query": tf.TensorSpec([], tf.int32)},
    }
    return tf.data.Dataset.from_generator(lambda: iter(records), output_signature=spec)


def test_record_one_example_per_answer():
    record = {
        "passage": "Bob flew.\n@highlight\nIt rained\n@highlight\nThe end",
        "query": "@placeholder flew.",
        "entities": ["Bob", "Ann"],
        "answers": ["Bob", "Bobby"],
        "idx": {"passage": 1, "query": 2},
    }
    out = list(p.record_text(_record_dataset([record]), prefix="record"))
    expected = (
        "record query: @placeholder flew. entities: Bob, Ann passage: Bob flew. It rained. The end"
    )
    assert [ex["inputs"].numpy().decode() for ex in out] == [expected, expected]
    assert [ex["targets"].numpy() for ex in out] == [b"Bob", b"Bobby"]
    assert [list(ex["answers"].numpy()) for ex in out] == [[b"Bob", b"Bobby"]] * 2
    assert [(int(ex["idx/passage"]), int(ex["idx/query"])) for ex in out] == [(1, 2), (1, 2)]


def test_record_drops_queries_without_answers():
    record = {
        "passage": "P",
        "query": "Q @placeholder",
        "entities": ["E"],
        "answers": [],
        "idx": {"passage": 0, "query": 0},
    }
    assert list(p.record_text(_record_dataset([record]))) == []
    assert p.dropped_counts() == {"super_glue/record:no_answers": 1}


def _wsc(text, pronoun, index, label=1, referent="Tom"):
    return {
        "text": text,
        "span1_text": referent,
        "span1_index": 0,
        "span2_text": pronoun,
        "span2_index": index,
        "label": label,
        "idx": 0,
    }


@pytest.mark.parametrize(
    "record, expected",
    [
        (
            _wsc("Mitchell asked Tom if he could lend some money.", "he", 4),
            "Mitchell asked Tom if *he* could lend some money.",
        ),
        # Punctuation stuck to the pronoun is split off (T5's special case, 'him,"').
        (
            _wsc('He said. "Good for him," he said.', "him", 4),
            'He said. "Good for *him* ," he said.',
        ),
        # Index off by one (T5's special case: 'use' instead of 'it').
        (_wsc("they might want to use it , but", "it", 4), "they might want to use *it* , but"),
        (_wsc("he ran.", "he", 0), "*he* ran."),
    ],
)
def test_wsc_simple_marks_pronoun(record, expected):
    out = list(p.wsc_simple_text(_dataset([record]), correct_referent_only=False))
    assert _strings(out, "inputs") == [expected]
    assert _strings(out, "targets") == ["Tom"]
    prefixed = p.wsc_simple_text(_dataset([record]), correct_referent_only=False, prefix="wsc:")
    assert _strings(prefixed, "inputs") == ["wsc: " + expected]


def test_wsc_simple_filters_and_drops():
    records = [
        _wsc("Tom said he ran.", "he", 2, label=1),
        _wsc("Tom said he ran.", "he", 2, label=0, referent="Ann"),
        _wsc("Tom said she ran.", "he", 2, label=1),  # pronoun not at its index
        _wsc("Tom said he ran.", "he", 2, label=-1),  # test split
    ]
    train = list(p.wsc_simple_text(_dataset(records), correct_referent_only=True))
    assert _strings(train, "targets") == ["Tom"]
    assert p.dropped_counts() == {"super_glue/wsc.fixed:pronoun_not_found": 1}
    p.reset_dropped_counts()
    evaluation = list(p.wsc_simple_text(_dataset(records), correct_referent_only=False))
    assert [int(ex["label"]) for ex in evaluation] == [1, 0]
    assert p.dropped_counts() == {
        "super_glue/wsc.fixed:pronoun_not_found": 1,
        "super_glue/wsc.fixed:no_label": 1,
    }
