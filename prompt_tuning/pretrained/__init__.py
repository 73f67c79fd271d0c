"""The embedded tiny pretrained T5: where it lives and the config that fits it.

`t5_tiny/` holds what `tools/pretrain_tiny.py` wrote: `sentencepiece.model` (the vocabulary of the
built-in tasks, `tasks.vocabularies.TINY_SPM_PATH`), `checkpoint_<steps>/` (a legacy T5X checkpoint)
and `card.json` (sizes, corpus, training, losses). Gin files use these functions
(`gin_configs/models/t5_1_1_tiny_pretrained.gin`).
"""

import glob
import json
import os

from prompt_tuning.t5 import config as t5_config

TINY_T5_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "t5_tiny")


def _card(directory: str) -> dict:
    path = os.path.join(directory, "card.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: the tiny pretrained T5 is not there. Restore it from git or "
            "rebuild it with `python tools/pretrain_tiny.py`."
        )
    with open(path) as f:
        return json.load(f)


def tiny_t5_checkpoint(directory: str = TINY_T5_DIR) -> str:
    """Path of the tiny T5's T5X checkpoint folder (`checkpoint_<steps>`)."""
    found = sorted(glob.glob(os.path.join(directory, "checkpoint_*")))
    if not found:
        raise FileNotFoundError(
            f"No checkpoint_* folder in {directory}. Restore it from git or rebuild it with "
            "`python tools/pretrain_tiny.py`."
        )
    return os.path.join(directory, _card(directory).get("checkpoint", os.path.basename(found[-1])))


def tiny_t5_config(directory: str = TINY_T5_DIR, **overrides) -> t5_config.T5Config:
    """The `T5Config` of the tiny T5 (sizes from its card.json), with `overrides` applied."""
    sizes = _card(directory)["config"]
    fields = {k: v for k, v in sizes.items() if k != "sentencepiece_pieces"}
    return t5_config.t5_1_1("small", **fields).replace(**overrides)
