"""Test-session set-up: 8 simulated CPU devices and a local SentencePiece model for T5 tasks."""

import importlib.util
import os
import pathlib
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# transformers (the numerical reference) would otherwise import TensorFlow too.
os.environ.setdefault("USE_TF", "0")
# One persistent compilation cache for every test process of this machine (both xdist workers and
# the processes tests launch inherit it): the suite compiles the same tiny-model programs in many
# files. JAX keys entries by the program, compiler options, XLA flags, JAX version and devices, and
# a loaded executable has the same HLO text, cost and memory analyses (tests read those).
# PROMPT_TUNING_TEST_JAX_CACHE names another folder; "off" compiles everything afresh.
_JAX_CACHE = os.environ.get("PROMPT_TUNING_TEST_JAX_CACHE") or os.path.join(
    tempfile.gettempdir(), "prompt_tuning_test_jax_cache"
)
if _JAX_CACHE != "off":
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JAX_CACHE)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))  # LRU beyond 4 GiB

# `make test` sets this when ../shared/t5x (T5X from source) is on PYTHONPATH: the T5X tests must
# then run, not skip because T5X does not import.
if os.environ.get("PROMPT_TUNING_EXPECT_T5X") and importlib.util.find_spec("t5x") is None:
    raise RuntimeError(
        "PROMPT_TUNING_EXPECT_T5X is set but T5X is not importable: put T5X's sources on "
        "PYTHONPATH (the Makefile uses ../shared/t5x) or unset the variable"
    )

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"
_SPM_FIXTURE = FIXTURES / "t5_sentencepiece.model"


def _tiny_spm_model() -> str:
    """Trains a small SentencePiece model once per machine when T5's real one is absent."""
    import sentencepiece as spm

    out = pathlib.Path(tempfile.gettempdir()) / "prompt_tuning_test_spm"
    model = out / "spm.model"
    if not model.exists():
        out.mkdir(parents=True, exist_ok=True)
        words = "the a of to is was and question answer sentence premise hypothesis yes no".split()
        text = out / "corpus.txt"
        text.write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(len(words))) * 50)
        spm.SentencePieceTrainer.train(
            input=str(text),
            model_prefix=str(out / "spm"),
            vocab_size=64,
            model_type="unigram",
            hard_vocab_limit=False,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
        )
    return str(model)


if "PROMPT_TUNING_SPM_PATH" not in os.environ:
    os.environ["PROMPT_TUNING_SPM_PATH"] = (
        str(_SPM_FIXTURE) if _SPM_FIXTURE.exists() else _tiny_spm_model()
    )
