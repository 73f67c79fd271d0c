"""Hugging Face PEFT prompt-tuning adapters: the one module that reads and writes them.

A PEFT prompt-tuning adapter for a sequence-to-sequence model is a folder of two files (as PEFT
0.17's `PeftModel.save_pretrained` writes them):

    adapter_config.json         PromptTuningConfig's fields: peft_type "PROMPT_TUNING",
                                task_type "SEQ_2_SEQ_LM", num_virtual_tokens P, token_dim H,
                                num_transformer_submodules, base_model_name_or_path, ...
    adapter_model.safetensors   one tensor, "prompt_embeddings" [P * num_transformer_submodules, H]

PEFT prepends the first P rows to the encoder's input embeddings and a column of ones to its
attention mask; with num_transformer_submodules = 2 (PEFT's default for SEQ_2_SEQ_LM) it also
prepends the next P rows to the decoder's input embeddings. Lester et al.'s prompt, the one this
project trains, is the encoder prompt alone: num_transformer_submodules = 1. Such an adapter's
`prompt_embeddings` IS our prompt `[P, H]`, so the two convert without loss.

Prefix tuning (key/value prefixes in every layer), P-tuning (a prompt encoder) and decoder-side
prompts have no encoder-prompt equivalent and are refused with the field and what to do.

This module imports only numpy and `prompt_tuning.prompts.files`, so the prompt files
(`train.prompt_files`), the server (`serve.loading`) and the exporter all use it.

Letters: P prompt length (num_virtual_tokens), H model dim (token_dim).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from prompt_tuning.prompts.files import PromptFileError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_PICKLE = "adapter_model.bin"
ADAPTER_CARD = "README.md"
TENSOR = "prompt_embeddings"
PEFT_TYPE = "PROMPT_TUNING"
TASK_TYPE = "SEQ_2_SEQ_LM"
_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_TRAIN_ONE = (
    "Train it with PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, "
    "num_transformer_submodules=1)"
)
_OTHER_PEFT_TYPES = {
    "PREFIX_TUNING": "prefix tuning adds key/value prefixes inside every attention layer",
    "P_TUNING": "P-tuning computes its prompt with a prompt encoder (an MLP or LSTM)",
    "MULTITASK_PROMPT_TUNING": "multitask prompt tuning composes a shared prompt with task factors",
}


class AdapterError(PromptFileError):
    """A folder is not a PEFT prompt-tuning adapter this project can use as an encoder prompt."""


def is_adapter(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding `adapter_config.json`."""
    return (pathlib.Path(path) / ADAPTER_CONFIG).is_file()


def adapter_config(
    num_virtual_tokens: int,
    token_dim: int,
    base_model: str,
    num_attention_heads: int | None = None,
    num_layers: int | None = None,
) -> dict[str, Any]:
    """PEFT's `PromptTuningConfig` fields (0.17.1) for an encoder prompt `[P, H]` of a T5.

    Args:
      num_virtual_tokens: P.
      token_dim: H.
      base_model: `base_model_name_or_path`, the frozen model's HF folder or hub name.
      num_attention_heads: the model's heads (informative for PEFT).
      num_layers: the model's encoder layers (informative for PEFT).

    Returns:
      The JSON-ready dict, keys as PEFT's `PeftConfig.to_dict` names them.
    """
    return {
        "task_type": TASK_TYPE,
        "peft_type": PEFT_TYPE,
        "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "revision": None,
        "inference_mode": True,
        "num_virtual_tokens": int(num_virtual_tokens),
        "token_dim": int(token_dim),
        "num_transformer_submodules": 1,
        "num_attention_heads": num_attention_heads,
        "num_layers": num_layers,
        "modules_to_save": None,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }


def write_adapter(
    folder: str | os.PathLike,
    prompt: np.ndarray,
    config: Mapping[str, Any],
    card: str | None = None,
) -> pathlib.Path:
    """Writes one adapter folder (under a temporary name beside it, then renamed).

    Args:
      folder: the folder to create; it must not exist or be empty.
      prompt: the encoder prompt `[P, H]` (written as float32).
      config: from `adapter_config` (P and H must match `prompt`).
      card: the model card (`README.md`), if any.

    Returns:
      `folder`.

    Raises:
      FileExistsError: `folder` exists and is not empty.
      ValueError: `prompt` is not `[P, H]` with the config's P and H.
    """
    return write_folder_atomically(folder, lambda tmp: write_files(tmp, prompt, config, card))


def write_files(
    folder: pathlib.Path, prompt: np.ndarray, config: Mapping[str, Any], card: str | None
) -> None:
    """Writes the adapter's files into `folder` (created if missing; not atomic by itself).

    Raises:
      ValueError: `prompt` is not `[P, H]` with the config's P and H.
    """
    from safetensors.numpy import save_file  # noqa: PLC0415

    prompt = np.asarray(prompt, np.float32)
    rows = config["num_virtual_tokens"] * config["num_transformer_submodules"]
    want = (rows, config["token_dim"])
    if prompt.shape != want:
        raise ValueError(f"The prompt {prompt.shape} does not fit the adapter config {want}.")
    folder.mkdir(parents=True, exist_ok=True)
    save_file({TENSOR: np.ascontiguousarray(prompt)}, folder / ADAPTER_WEIGHTS, {"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    if card is not None:
        (folder / ADAPTER_CARD).write_text(card)


def write_folder_atomically(folder: str | os.PathLike, write: Any) -> pathlib.Path:
    """Calls `write(tmp)` on a new temporary folder beside `folder`, then renames it to `folder`.

    An existing empty `folder` is replaced; a non-empty one is refused before anything is written.

    Raises:
      FileExistsError: `folder` is a file or a non-empty folder.
    """
    folder = pathlib.Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(
            f"--output {folder} exists and is not empty; give a new folder (nothing was written)."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp"))
    try:
        write(tmp)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_adapter(folder: str | os.PathLike, width: int | None = None) -> np.ndarray:
    """The encoder prompt `[P, H]` of a PEFT prompt-tuning adapter folder (float32).

    Args:
      folder: the adapter folder (`adapter_config.json`, `adapter_model.safetensors`).
      width: the model's H, checked against token_dim when given.

    Returns:
      PEFT's `prompt_embeddings`, exactly (as float32).

    Raises:
      FileNotFoundError: no adapter_config.json.
      AdapterError: not a prompt-tuning adapter for the encoder (the field, its value and what to
        do are named), a missing or damaged tensor file, or a token_dim other than `width`.
    """
    folder = pathlib.Path(folder)
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {ADAPTER_CONFIG}: it is not a PEFT adapter.")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        fix = (
            f"it holds only {ADAPTER_WEIGHTS_PICKLE} (a pickle, never loaded here): save it "
            "again with save_pretrained(..., safe_serialization=True), PEFT's default"
            if (folder / ADAPTER_WEIGHTS_PICKLE).is_file()
            else "copy the whole folder save_pretrained wrote"
        )
        raise AdapterError(f"PEFT adapter {folder} has no {ADAPTER_WEIGHTS}: {fix}.")
    return parse_adapter(config_path.read_bytes(), weights.read_bytes(), str(folder), width)


def parse_adapter(
    config_bytes: bytes, weights_bytes: bytes, where: str, width: int | None = None
) -> np.ndarray:
    """`read_adapter` on the two files' bytes (e.g. an upload); `where` names the source."""
    try:
        config = json.loads(config_bytes)
    except (ValueError, UnicodeDecodeError) as error:
        raise AdapterError(f"{where}: {ADAPTER_CONFIG} is not JSON ({error}).") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{where}: {ADAPTER_CONFIG} is not a JSON object.")
    length, dim = check_config(config, where)
    tensors = read_safetensors(weights_bytes, f"{where}/{ADAPTER_WEIGHTS}")
    if TENSOR not in tensors:
        raise AdapterError(
            f"{where}/{ADAPTER_WEIGHTS} has no tensor {TENSOR!r} (it holds "
            f"{', '.join(sorted(tensors)) or 'nothing'}): it is not a prompt-tuning adapter."
        )
    prompt = tensors[TENSOR]
    if prompt.shape != (length, dim):
        raise AdapterError(
            f"{where}: {TENSOR} has shape {list(prompt.shape)}, but {ADAPTER_CONFIG} says "
            f"num_virtual_tokens={length}, token_dim={dim} ([{length}, {dim}] expected)."
        )
    if width is not None:
        check_width(config, width, where)
    return np.asarray(prompt, np.float32)


def read_adapter_archive(data: bytes, where: str, width: int | None = None) -> np.ndarray:
    """The encoder prompt `[P, H]` of an adapter folder sent as a zip archive (e.g. an upload).

    The archive holds `adapter_config.json` and `adapter_model.safetensors`, at its top level or in
    one folder (`zip -r a.zip adapter/`); other members (the model card) are ignored.

    Raises:
      AdapterError: not a zip, a file missing or present twice, or an invalid adapter.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise AdapterError(f"{where} is not a zip archive of a PEFT adapter folder.") from None
    with archive:
        found = {}
        for wanted in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            members = [m for m in archive.namelist() if m.rsplit("/", 1)[-1] == wanted]
            if len(members) != 1:
                raise AdapterError(
                    f"{where} holds {len(members)} files named {wanted}; zip one adapter folder "
                    f"(its {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})."
                )
            try:
                found[wanted] = archive.read(members[0])
            except (zipfile.BadZipFile, OSError, ValueError) as error:
                raise AdapterError(f"{where}: {members[0]} is damaged ({error}).") from None
    return parse_adapter(found[ADAPTER_CONFIG], found[ADAPTER_WEIGHTS], where, width)


def check_config(config: Mapping[str, Any], where: str) -> tuple[int, int]:
    """Checks that an adapter config means an encoder prompt; returns (P, H).

    Raises:
      AdapterError: naming the field, its value and what to do.
    """
    peft_type = config.get("peft_type")
    if peft_type != PEFT_TYPE:
        what = _OTHER_PEFT_TYPES.get(peft_type, "it is not a prompt-tuning adapter")
        raise AdapterError(
            f"{where}: peft_type is {peft_type!r}, not {PEFT_TYPE!r}; {what}, which has no "
            f"equivalent encoder prompt [P, H]. {_TRAIN_ONE}."
        )
    task_type = config.get("task_type")
    if task_type != TASK_TYPE:
        raise AdapterError(
            f"{where}: task_type is {task_type!r}; this project prompts the encoder of a T5 "
            f"(task_type {TASK_TYPE!r}). {_TRAIN_ONE}."
        )
    submodules = config.get("num_transformer_submodules")
    if submodules != 1:
        raise AdapterError(
            f"{where}: num_transformer_submodules is {submodules!r}; with 2 (PEFT's default for "
            "SEQ_2_SEQ_LM) PEFT prepends a second prompt to the decoder's inputs, which an "
            f"encoder prompt (Lester et al.) cannot represent. {_TRAIN_ONE}."
        )
    for field in ("num_virtual_tokens", "token_dim"):
        value = config.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AdapterError(
                f"{where}: {field} is {value!r}; a prompt-tuning adapter states it as a positive "
                "integer (save the adapter with PEFT's save_pretrained)."
            )
    return config["num_virtual_tokens"], config["token_dim"]


def check_width(config: Mapping[str, Any], width: int, where: str) -> None:
    """Raises `AdapterError` naming both widths when token_dim is not the model's H."""
    if config.get("token_dim") != width:
        raise AdapterError(
            f"{where}: token_dim is {config.get('token_dim')}, but the model's width (emb_dim) "
            f"is {width}; the adapter was trained for another base model "
            f"({config.get('base_model_name_or_path')!r}). Use an adapter of this model."
        )


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """An adapter's `adapter_config.json` as a dict (for messages and checks)."""
    path = pathlib.Path(folder) / ADAPTER_CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise AdapterError(f"{path} is not readable JSON ({error}).") from None


def read_safetensors(data: bytes, where: str) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file's bytes (float64/32/16 and bfloat16; no torch needed).

    The format: an 8-byte little-endian header size, a JSON header `{name: {"dtype", "shape",
    "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the tensors' bytes.

    Raises:
      AdapterError: truncated, not safetensors, or a dtype other than a float one.
    """
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
    except (struct.error, ValueError, UnicodeDecodeError):
        raise AdapterError(f"{where} is not a safetensors file (truncated or damaged).") from None
    body = memoryview(data)[8 + size :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        begin, end = info.get("data_offsets", (0, -1))
        count = int(np.prod(info.get("shape", ()), dtype=np.int64))
        if dtype is None:
            kind = info.get("dtype")
            raise AdapterError(f"{where}: tensor {name!r} has dtype {kind}, not a float type.")
        if end > len(body) or end - begin != count * dtype.itemsize:
            raise AdapterError(f"{where}: tensor {name!r} is truncated or damaged.")
        flat = np.frombuffer(body[begin:end], dtype.newbyteorder("<"))
        tensors[name] = flat.reshape(info["shape"])
    return tensors
