"""A frozen T5 checkpoint converted between the T5X and Hugging Face layouts.

`convert` reads anything `checkpoints.load_checkpoint` reads and writes a Hugging Face folder
(`config.json` + `model.safetensors`; prompt parameters are dropped: a Hugging Face T5 has none)
or a legacy T5X checkpoint folder (tied, unscaled logits written untied, `untie_unscaled`, since
T5X reads tied logits back as scaled by H^-0.5). `tools/convert_checkpoint.py` is its command.

Letters: H model dim.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from prompt_tuning.t5 import checkpoints


@dataclasses.dataclass
class ConversionResult:
    """What `main` returns.

    Attributes:
      config: the model's `T5Config` (as loaded).
      output: the written folder.
      dropped: names of parameters not written (prompt parameters for HF).
      untied: whether tied, unscaled logits were written as an explicit `logits_dense` (T5X).
    """

    config: Any
    output: pathlib.Path
    dropped: list[str]
    untied: bool


def untie_unscaled(params: dict[str, Any], config: Any) -> tuple[dict[str, Any], Any, bool]:
    """For T5X output: tied logits without scaling become an explicit `logits_dense` kernel.

    Returns:
      `(params, config, changed)`; unchanged unless the model is tied and unscaled.
    """
    if not (config.logits_via_embedding and not config.scale_tied_logits):
        return params, config, False
    decoder = dict(params["decoder"])
    decoder["logits_dense"] = {"kernel": np.asarray(params["token_embedder"]["embedding"]).T}
    untied = config.replace(logits_via_embedding=False, scale_tied_logits=True)
    return dict(params, decoder=decoder), untied, True


def convert(
    source: str, output: str, to: str, transformers_version: int = 4, step: int = 0
) -> ConversionResult:
    """Loads `source` and writes it in the `to` layout ("hf" or "t5x").

    Raises:
      CheckpointError: unknown `to`, an unreadable input or an existing output folder.
    """
    if to not in ("hf", "t5x"):
        raise checkpoints.CheckpointError(f"--to must be 'hf' or 't5x', got {to!r}.")
    config, params = checkpoints.load_checkpoint(source)
    prompt = params.get("encoder", {}).get("prompt")
    dropped = []
    if to == "hf" and prompt is not None:
        dropped = [f"encoder/prompt/{name}" for name in checkpoints.flatten(prompt)]
        encoder = {k: v for k, v in params["encoder"].items() if k != "prompt"}
        params = dict(params, encoder=encoder)
    untied = False
    if to == "hf":
        checkpoints.save_hf_checkpoint(params, config, output, transformers_version)
    else:
        params, config, untied = untie_unscaled(params, config)
        checkpoints.save_t5x_checkpoint(params, output, step)
    return ConversionResult(config, pathlib.Path(output), dropped, untied)
