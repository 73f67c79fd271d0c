"""Default vocabularies of the registered tasks.

The built-in tasks use the embedded tiny T5's SentencePiece model
(`prompt_tuning/pretrained/t5_tiny/sentencepiece.model`, made by `tools/pretrain_tiny.py`: 512 BPE
pieces, pad 0, EOS 1, UNK 2, no extra ids).

T5's public SentencePiece model is read from its standard path unless the environment variable
`PROMPT_TUNING_SPM_PATH` names another copy (a local file, or any path `tf.io.gfile` reads). The
vocabulary is resolved when a task is registered; seqio reads the file only when it first tokenizes.

The other T5 families' vocabularies (their gin model files bind VOCABULARY to them), as T5X's gin
files configure them:

- Flan-T5: T5's (`t5_vocabulary`).
- mT5: `mc4.250000.100extra` (250,000 pieces + 100 extra ids; the model pads to 250,112 rows),
  `$PROMPT_TUNING_MT5_SPM_PATH` or `MT5_SPM_PATH`.
- UMT5: `umt5.256000` with 300 extra ids (256,300; the model pads to 256,384),
  `$PROMPT_TUNING_UMT5_SPM_PATH` or `UMT5_SPM_PATH`.
- ByT5: `seqio.ByteVocabulary` (UTF-8 bytes offset by 3 special ids; needs no file).
"""

import contextlib
import os
import pathlib

import seqio
import tensorflow as tf
from google.protobuf import message

T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
T5_EXTRA_IDS = 100
SPM_PATH_ENV = "PROMPT_TUNING_SPM_PATH"
MT5_SPM_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
MT5_EXTRA_IDS = 100
MT5_SPM_PATH_ENV = "PROMPT_TUNING_MT5_SPM_PATH"
UMT5_SPM_PATH = "gs://t5-data/vocabs/umt5.256000/sentencepiece.model"
UMT5_EXTRA_IDS = 300
UMT5_SPM_PATH_ENV = "PROMPT_TUNING_UMT5_SPM_PATH"
TINY_SPM_PATH = str(
    pathlib.Path(__file__).resolve().parents[1]
    / "prompt_tuning"
    / "pretrained"
    / "t5_tiny"
    / "sentencepiece.model"
)


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """`seqio.SentencePieceVocabulary` whose load errors name the file and the fix.

    seqio reads the model lazily, at the first tokenization, and a missing or damaged file then
    surfaces as protobuf's "Error parsing message with type 'sentencepiece.ModelProto'", which
    names neither the file nor the problem. seqio loads the file in its three public entry
    points to the model, `load_model()`, `sp_model` and `tokenizer` (every encode, decode, id
    and size goes through them), so those are what this class wraps; seqio's private
    `_model_context` is no longer overridden.
    """

    def load_model(self) -> None:
        with _named_load_errors(self.sentencepiece_model_file):
            super().load_model()

    @property
    def sp_model(self) -> bytes | None:
        with _named_load_errors(self.sentencepiece_model_file):
            return super().sp_model

    @property
    def tokenizer(self):
        with _named_load_errors(self.sentencepiece_model_file):
            return super().tokenizer


@contextlib.contextmanager
def _named_load_errors(path: str):
    """Turns a failed SentencePiece load of `path` into an error naming the file and the fix.

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: `path` is not a SentencePiece model.
    """
    try:
        yield
    except (message.DecodeError, tf.errors.OpError, RuntimeError, OSError) as error:
        missing = isinstance(error, tf.errors.NotFoundError | FileNotFoundError)
        what = "does not exist" if missing else f"is not a SentencePiece model ({error})"
        raise (FileNotFoundError if missing else ValueError)(
            f"The vocabulary file {path} {what}. T5's tasks read T5's sentencepiece.model "
            f"(cc_all.32000.100extra) from ${SPM_PATH_ENV} or {T5_SPM_PATH}; the built-in "
            f"tasks read the embedded {TINY_SPM_PATH}; mT5's and UMT5's vocabularies are "
            f"read from ${MT5_SPM_PATH_ENV} or {MT5_SPM_PATH} and ${UMT5_SPM_PATH_ENV} or "
            f"{UMT5_SPM_PATH}."
        ) from None


def t5_spm_path() -> str:
    """Path of T5's SentencePiece model: `$PROMPT_TUNING_SPM_PATH` or T5's public path."""
    return os.environ.get(SPM_PATH_ENV) or T5_SPM_PATH


def t5_vocabulary() -> seqio.SentencePieceVocabulary:
    """T5's vocabulary: 32,000 SentencePiece pieces plus 100 extra ids."""
    return SentencePieceVocabulary(t5_spm_path(), extra_ids=T5_EXTRA_IDS)


def mt5_vocabulary() -> seqio.SentencePieceVocabulary:
    """mT5's vocabulary: 250,000 SentencePiece pieces plus 100 extra ids."""
    path = os.environ.get(MT5_SPM_PATH_ENV) or MT5_SPM_PATH
    return SentencePieceVocabulary(path, extra_ids=MT5_EXTRA_IDS)


def umt5_vocabulary() -> seqio.SentencePieceVocabulary:
    """UMT5's vocabulary: 256,000 SentencePiece pieces plus 300 extra ids."""
    path = os.environ.get(UMT5_SPM_PATH_ENV) or UMT5_SPM_PATH
    return SentencePieceVocabulary(path, extra_ids=UMT5_EXTRA_IDS)


def byt5_vocabulary() -> seqio.ByteVocabulary:
    """ByT5's vocabulary: UTF-8 bytes as ids 3..258 (0 pad, 1 EOS, 2 UNK); no file."""
    return seqio.ByteVocabulary()


def t5_output_features(add_eos: bool = True) -> dict[str, seqio.Feature]:
    """The `inputs`/`targets` output features of a text-to-text task with T5's vocabulary."""
    vocabulary = t5_vocabulary()
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=add_eos, required=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=add_eos),
    }


def tiny_vocabulary() -> seqio.SentencePieceVocabulary:
    """The embedded tiny T5's vocabulary (`TINY_SPM_PATH`, no extra ids)."""
    return SentencePieceVocabulary(TINY_SPM_PATH, extra_ids=0)


def tiny_output_features() -> dict[str, seqio.Feature]:
    """`inputs`/`targets` features with the tiny T5's vocabulary (EOS appended)."""
    vocabulary = tiny_vocabulary()
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }
