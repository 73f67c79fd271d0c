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
