"""Tests of the MPQA/Subj/CR/MR tasks read from user files."""

import pytest
import seqio

import tasks.sentence as sentence
from tasks.labels import label_strings

LENGTHS = {"inputs": 64, "targets": 8}


def _get(name, split):
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(LENGTHS, split=split, shuffle=False, try_in_mem_cache=False)
    return [
        (ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
        for ex in ds.as_numpy_iterator()
    ]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(sentence.DATA_DIR_ENV, str(tmp_path))
    return tmp_path


def test_tsv_with_header_and_integer_or_string_labels(data_dir):
    (data_dir / "mr").mkdir()
    (data_dir / "mr" / "validation.tsv").write_text(
        "sentence\tlabel\na fine film\t1\ndull, slow\tnegative\nit works\tpositive\n"
    )
    assert _get("mr", "validation") == [
        ("sentence: a fine film", "positive"),
        ("sentence: dull, slow", "negative"),
        ("sentence: it works", "positive"),
    ]
    assert _get("mr_prefixed", "validation")[0] == ("mr sentence: a fine film", "positive")
    assert label_strings("mr") == ("negative", "positive")


def test_csv_label_first_and_subj_ids(data_dir):
    (data_dir / "subj").mkdir()
    (data_dir / "subj" / "test.csv").write_text(
        '0,"i think, therefore"\n1,the film is set in rome\n'
    )
    assert _get("subj", "test") == [
        ("sentence: i think, therefore", "subjective"),
        ("sentence: the film is set in rome", "objective"),
    ]
    assert set(label_strings("subj")) == {"objective", "subjective"}


def test_missing_file_error_names_path_and_format_at_dataset_time(data_dir):
    task = seqio.get_mixture_or_task("cr")  # registration needs no file
    with pytest.raises(FileNotFoundError) as error:
        _get("cr", "train")
    message = str(error.value)
    assert str(data_dir / "cr" / "train") + ".tsv" in message
    assert "sentence<TAB>label" in message and sentence.DATA_DIR_ENV in message
    assert task.name == "cr"


def test_malformed_row_is_reported_with_line(data_dir):
    (data_dir / "mpqa").mkdir()
    (data_dir / "mpqa" / "train.tsv").write_text("good\t1\nbad row without label\n")
    with pytest.raises(ValueError, match="line 2"):
        sentence.read_examples("mpqa", "train")
    (data_dir / "mpqa" / "train.tsv").write_text("good\t1\nbad\t7\n")
    with pytest.raises(ValueError, match="line 2"):
        sentence.read_examples("mpqa", "train")


def test_files_that_are_not_text_or_hold_nothing_are_named(data_dir):
    (data_dir / "cr").mkdir()
    path = data_dir / "cr" / "train.tsv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")
    with pytest.raises(ValueError, match=rf"{path} is not UTF-8 text .*sentence and label"):
        sentence.read_examples("cr", "train")
    path.write_text("good\t1\n" + "x" * 200_000 + "\t0\n")  # not a sentence: a binary blob
    with pytest.raises(ValueError, match=rf"{path}, line 2: not .tsv text"):
        sentence.read_examples("cr", "train")
    path.write_text("")
    with pytest.raises(ValueError, match=rf"{path} holds no examples"):
        sentence.read_examples("cr", "train")


def test_few_shot_variant_draws_k_from_train(data_dir):
    (data_dir / "cr").mkdir()
    rows = [f"sentence number {i}\t{i % 2}" for i in range(150)]
    (data_dir / "cr" / "train.tsv").write_text("\n".join(rows) + "\n")
    train = _get("cr_fewshot_k100_seed1", "train")
    dev = _get("cr_fewshot_k100_seed1", "validation")
    assert len(train) == 100 and len(dev) == 50
    assert not {t for t, _ in train} & {t for t, _ in dev}
    assert _get("cr_fewshot_k100_seed1", "train") == train
    assert label_strings("cr_fewshot_k100_seed1") == ("negative", "positive")
