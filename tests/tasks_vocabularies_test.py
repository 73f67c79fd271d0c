"""The tasks' SentencePiece vocabularies: the embedded one tokenizes, bad files are named."""

import pytest

from tasks import vocabularies


def test_tiny_vocabulary_round_trips():
    vocabulary = vocabularies.tiny_vocabulary()
    assert vocabulary.vocab_size == 512
    assert vocabulary.decode(vocabulary.encode("positive")) == "positive"


def test_a_damaged_or_missing_model_file_is_named(tmp_path):
    bad = tmp_path / "spm.model"
    bad.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match=rf"vocabulary file {bad} is not a SentencePiece model"):
        vocabularies.SentencePieceVocabulary(str(bad)).encode("hello")
    missing = tmp_path / "missing.model"
    with pytest.raises(FileNotFoundError, match=rf"{missing} does not exist.*PROMPT_TUNING_SPM"):
        vocabularies.SentencePieceVocabulary(str(missing)).encode("hello")


@pytest.mark.parametrize(
    "use",
    [
        lambda v: v.load_model(),
        lambda v: v.vocab_size,  # through `tokenizer`
        lambda v: v.encode_tf("hello"),  # through `sp_model`
        lambda v: v.decode([5, 6]),
    ],
    ids=["load_model", "vocab_size", "encode_tf", "decode"],
)
def test_every_public_way_to_the_model_names_a_bad_file(tmp_path, use):
    # seqio's public entry points (load_model, sp_model, tokenizer) are wrapped, not its private
    # `_model_context`: a seqio that loads the model another way fails here.
    bad = tmp_path / "spm.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=rf"vocabulary file {bad} is not a SentencePiece model"):
        use(vocabularies.SentencePieceVocabulary(str(bad)))
    assert "_model_context" not in vocabularies.SentencePieceVocabulary.__dict__


def test_byt5_vocabulary_is_utf8_bytes_offline():
    vocabulary = vocabularies.byt5_vocabulary()
    text = "héllo, 世界"
    ids = vocabulary.encode(text)
    assert ids == [b + 3 for b in text.encode("utf-8")]  # 0 pad, 1 EOS, 2 UNK come first
    assert vocabulary.decode(ids) == text
    assert vocabulary.vocab_size == 259  # within ByT5's 384 embedding rows
    assert (vocabulary.pad_id, vocabulary.eos_id) == (0, 1)


@pytest.mark.parametrize(
    "make, env, public, extra_ids",
    [
        (vocabularies.mt5_vocabulary, "PROMPT_TUNING_MT5_SPM_PATH", "mc4.250000.100extra", 100),
        (vocabularies.umt5_vocabulary, "PROMPT_TUNING_UMT5_SPM_PATH", "umt5.256000", 300),
    ],
)
def test_mt5_and_umt5_vocabularies_load_the_file_named_with_their_extra_ids(
    monkeypatch, make, env, public, extra_ids
):
    # The public files cannot be downloaded here: the loading code runs on the embedded model.
    monkeypatch.delenv(env, raising=False)
    assert f"gs://t5-data/vocabs/{public}/sentencepiece.model" == make().sentencepiece_model_file
    monkeypatch.setenv(env, vocabularies.TINY_SPM_PATH)
    vocabulary = make()
    assert vocabulary.sentencepiece_model_file == vocabularies.TINY_SPM_PATH
    assert vocabulary.vocab_size == 512 + extra_ids
    assert vocabulary.decode(vocabulary.encode("positive")) == "positive"
    assert vocabulary.encode("<extra_id_0>") == [512 + extra_ids - 1]  # extra ids count down
    monkeypatch.setenv(env, "/nonexistent/spm.model")
    with pytest.raises(FileNotFoundError, match=rf"/nonexistent/spm.model does not exist.*{env}"):
        make().encode("hello")
