"""PEFT adapters out (`pt-export --format=peft`) and in (`read_prompt_file(adapter_folder)`).

The reference is PEFT itself: an exported adapter loaded with `PeftModel.from_pretrained` on the
embedded tiny T5 converted to a transformers folder must give our logits and greedy outputs, and
an adapter PEFT saved must read as PEFT's own prompt embedding.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece

peft = pytest.importorskip("peft", reason="the PEFT reference: `pip install peft` (test extra)")
torch = pytest.importorskip("torch", reason="the PEFT reference runs on torch (test extra)")
transformers = pytest.importorskip("transformers", reason="test extra")

from prompt_tuning import pretrained, prompts, t5  # noqa: E402
from prompt_tuning.export import __main__ as export_main  # noqa: E402
from prompt_tuning.export import exporter  # noqa: E402
from prompt_tuning.prompts import peft_format  # noqa: E402
from prompt_tuning.t5 import checkpoints  # noqa: E402
from prompt_tuning.train import prompt_files  # noqa: E402
from tasks import vocabularies  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
P = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The embedded tiny T5 (config, params) and the same model as a transformers folder."""
    config, params = t5.load_checkpoint(pretrained.tiny_t5_checkpoint())
    hf_dir = tmp_path_factory.mktemp("hf") / "t5_tiny"
    checkpoints.save_hf_checkpoint(params, config, hf_dir)
    return config, params, hf_dir


def _random_prompt(width: int, seed: int = 0, length: int = P) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.5, (length, width)).astype(np.float32)


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    """Encoder tokens [2, T] of two pretraining-style texts (row 1 padded); targets [2, 5]."""
    processor = sentencepiece.SentencePieceProcessor(model_file=vocabularies.TINY_SPM_PATH)
    texts = ["sentiment: a great film with a moving story", "topic: the team won the match"]
    rows = [processor.encode(text) + [1] for text in texts]  # EOS = 1
    tokens = np.zeros((2, max(map(len, rows))), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    assert (tokens[1] == 0).any()
    targets = np.random.default_rng(1).integers(3, 500, (2, 5)).astype(np.int32)
    return tokens, targets


def _ours(config, params, prompt, tokens, targets, max_length):
    """Our logits [B, S, V] and greedy tokens with the prompt prepended to the encoder input."""
    model = t5.EncoderDecoder(config, prompt=prompts.Prompt(length=prompt.shape[0]))
    full = dict(params, encoder=dict(params["encoder"], prompt={"prompt": prompt}))
    inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    logits = model.apply({"params": full}, tokens, inputs, targets, enable_dropout=False)
    greedy = t5.decoding.greedy_decode(model, full, tokens, max_length)
    return np.asarray(logits), np.asarray(greedy)


def _peft(hf_dir, adapter_dir, tokens, targets, max_length):
    """PEFT's logits and greedy tokens (decoder start dropped, padded with 0 to max_length)."""
    base = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    complaints = [str(w.message) for w in caught if "keys" in str(w.message).lower()]
    assert complaints == []
    again = model.load_adapter(adapter_dir, adapter_name="again")
    # PEFT loads `prompt_embeddings` into the prompt encoder with a strict load of its own (any
    # missing or extra key raises); the model-wide non-strict load before it lists it as unexpected,
    # as for an adapter PEFT saved itself. Nothing else may be missing or unexpected.
    assert list(again.missing_keys) == []
    assert list(again.unexpected_keys) in ([], [peft_format.TENSOR])
    ids, mask = torch.tensor(tokens, dtype=torch.long), torch.tensor(tokens > 0, dtype=torch.long)
    decoder_inputs = torch.tensor(np.pad(targets, ((0, 0), (1, 0)))[:, :-1], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_inputs).logits
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_length, do_sample=False
        )
    greedy = out.numpy()[:, 1:]
    greedy = np.pad(greedy, ((0, 0), (0, max_length - greedy.shape[1])))
    return logits.numpy(), greedy, model


def test_exported_adapter_in_peft_equals_our_prompted_model(tiny, tmp_path):
    config, params, hf_dir = tiny
    prompt = _random_prompt(config.emb_dim)
    np.save(tmp_path / "prompt.npy", prompt)
    [adapter] = exporter.export_peft(tmp_path / "prompt.npy", str(hf_dir), tmp_path / "adapter")
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PROMPT_TUNING" and saved["task_type"] == "SEQ_2_SEQ_LM"
    assert (saved["num_virtual_tokens"], saved["token_dim"]) == (P, config.emb_dim)
    assert saved["num_transformer_submodules"] == 1
    assert saved["base_model_name_or_path"] == str(hf_dir)
    assert (saved["num_attention_heads"], saved["num_layers"]) == (4, 3)
    # PEFT's own config class accepts every field (an unknown one would raise).
    peft.PromptTuningConfig.from_pretrained(str(adapter))

    tokens, targets = _inputs()
    ours_logits, ours_greedy = _ours(config, params, prompt, tokens, targets, 8)
    peft_logits, peft_greedy, model = _peft(hf_dir, adapter, tokens, targets, 8)
    weight = model.prompt_encoder["default"].embedding.weight.detach().numpy()
    np.testing.assert_array_equal(weight, prompt)
    scale = np.abs(ours_logits).max()
    np.testing.assert_allclose(peft_logits, ours_logits, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(peft_greedy, ours_greedy)
    # The prompt matters: without it PEFT's base model decodes something else.
    assert not np.allclose(peft_logits, _base_logits(hf_dir, tokens, targets), atol=1e-3)


def _base_logits(hf_dir, tokens, targets):
    base = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    decoder_inputs = torch.tensor(np.pad(targets, ((0, 0), (1, 0)))[:, :-1], dtype=torch.long)
    with torch.no_grad():
        return base(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(tokens > 0, dtype=torch.long),
            decoder_input_ids=decoder_inputs,
        ).logits.numpy()


def _peft_saved(tmp_path, width, submodules=1, length=P, **kwargs):
    """An adapter PEFT itself saved on a tiny random T5 of width `width`, and its embedding."""
    torch.manual_seed(0)
    hf = transformers.T5Config(
        vocab_size=64, d_model=width, d_kv=8, d_ff=32, num_layers=1, num_heads=2
    )
    config = peft.PromptTuningConfig(
        task_type=peft.TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=length,
        num_transformer_submodules=submodules,
        **kwargs,
    )
    model = peft.get_peft_model(transformers.T5ForConditionalGeneration(hf), config)
    with torch.no_grad():  # not PEFT's init: a value a wrong reader could not reproduce
        model.prompt_encoder["default"].embedding.weight.normal_()
    model.save_pretrained(tmp_path / "saved")
    return tmp_path / "saved", model.prompt_encoder["default"].embedding.weight.detach().numpy()


def test_read_prompt_file_returns_peft_embedding(tmp_path):
    folder, weight = _peft_saved(tmp_path, width=24)
    value = prompt_files.read_prompt_file(folder)
    assert value.shape == (P, 24)
    np.testing.assert_array_equal(value, weight)
    np.testing.assert_array_equal(prompt_files.load_prompt_npy(folder, (P, 24)), weight)


def test_prompt_file_loads_an_adapter_into_the_trainable_prompt(tmp_path):
    folder, weight = _peft_saved(tmp_path, width=24)
    trainable = {"encoder": {"prompt": {"prompt": jnp.zeros((P, 24), jnp.float32)}}}
    loaded = prompt_files.load_into(trainable, folder, prompts.Prompt(length=P))
    np.testing.assert_array_equal(np.asarray(loaded["encoder"]["prompt"]["prompt"]), weight)
    with pytest.raises(prompt_files.PromptFileError, match=r"\(6, 24\).*\(4, 24\)"):
        trainable = {"encoder": {"prompt": {"prompt": jnp.zeros((4, 24), jnp.float32)}}}
        prompt_files.load_into(trainable, folder, prompts.Prompt(length=4))


def test_read_prompt_file_refuses_decoder_prompts(tmp_path):
    folder, _ = _peft_saved(tmp_path, width=24, submodules=2)
    with pytest.raises(peft_format.AdapterError, match=r"num_transformer_submodules is 2.*decoder"):
        prompt_files.read_prompt_file(folder)


@pytest.mark.parametrize("kind", ["PREFIX_TUNING", "P_TUNING"])
def test_read_prompt_file_refuses_other_peft_types(tmp_path, kind):
    folder, _ = _peft_saved(tmp_path, width=24)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(dict(config, peft_type=kind)))
    match = f"peft_type is '{kind}'.*PromptTuningConfig"
    with pytest.raises(peft_format.AdapterError, match=match):
        prompt_files.read_prompt_file(folder)


def test_token_dim_other_than_model_width_names_both(tmp_path):
    folder, _ = _peft_saved(tmp_path, width=24)
    content = prompt_files.read_prompt_file(folder)
    match = r"token_dim is 24.*width \(emb_dim\) is 128"
    with pytest.raises(peft_format.AdapterError, match=match):
        prompt_files.values_for(content, {"prompt": (P, 128)}, prompts.Prompt(length=P), folder)


def test_folder_without_adapter_config_is_named(tmp_path):
    with pytest.raises(prompt_files.PromptFileError, match="without adapter_config.json"):
        prompt_files.read_prompt_file(tmp_path)


def test_multi_task_prompt_writes_one_adapter_per_task(tiny, tmp_path):
    config, _, hf_dir = tiny
    bank = np.stack([_random_prompt(config.emb_dim, seed) for seed in range(3)])
    np.save(tmp_path / "bank.npy", bank)
    written = exporter.export_peft(
        tmp_path / "bank.npy", str(hf_dir), tmp_path / "out", ["rte", "cb", "copa"]
    )
    assert [p.name for p in written] == ["rte", "cb", "copa"]
    for row, folder in enumerate(written):
        np.testing.assert_array_equal(prompt_files.read_prompt_file(folder), bank[row])
        assert "rte cb copa".split()[row] in (folder / "README.md").read_text()
    default = exporter.export_peft(tmp_path / "bank.npy", str(hf_dir), tmp_path / "out2")
    assert [p.name for p in default] == ["task_0", "task_1", "task_2"]
    with pytest.raises(exporter.ExportError, match="holds 3 task prompts.*gives 2"):
        exporter.export_peft(tmp_path / "bank.npy", str(hf_dir), tmp_path / "out3", ["a", "b"])
    assert not (tmp_path / "out3").exists()


def _run_dir(tmp_path, prompt_module: str, export) -> pathlib.Path:
    """A MODEL_DIR as the trainer leaves it (config.gin, prompts/, best.json, metrics.jsonl)."""
    run = tmp_path / "run"
    (run / "prompts").mkdir(parents=True)
    (run / "config.gin").write_text(
        f"MIXTURE_OR_TASK_NAME = 'builtin_sentiment'\nPROMPT = @prompts.{prompt_module}()\n"
        "PROMPT_LENGTH = 6\nTRAIN_STEPS = 300\n"
    )
    (run / "best.json").write_text(json.dumps({"step": 200, "metric": "accuracy", "value": 0.9}))
    lines = [{"step": 200, "kind": "eval", "accuracy": 0.9}]
    lines += [{"step": 300, "kind": "eval", "accuracy": 0.8}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    prompt_files.write_export(run, "best", export)
    return run


def test_run_dir_exports_best_with_card(tiny, tmp_path):
    config, _, hf_dir = tiny
    prompt = _random_prompt(config.emb_dim)
    later = prompt_files.PromptExport(prompt_files.PLAIN, prompt + 1)
    run = _run_dir(tmp_path, "Prompt", prompt_files.PromptExport(prompt_files.PLAIN, prompt))
    prompt_files.write_export(run, "step_300", later)
    [adapter] = exporter.export_peft(run, str(hf_dir), tmp_path / "adapter")
    np.testing.assert_array_equal(prompt_files.read_prompt_file(adapter), prompt)
    card = (adapter / "README.md").read_text()
    facts = ("builtin_sentiment", "step: 200", "accuracy = 0.9", "TRAIN_STEPS = 300", str(hf_dir))
    for fact in facts:
        assert fact in card


def test_idpg_run_and_parameters_file_are_refused(tiny, tmp_path):
    _, _, hf_dir = tiny
    export = prompt_files.PromptExport(
        prompt_files.PARAMETERS, {"prompt": np.zeros((6, 128), np.float32)}
    )
    run = _run_dir(tmp_path, "InstancePrompt", export)
    with pytest.raises(exporter.ExportError, match="InstancePrompt is instance-dependent"):
        exporter.export_peft(run, str(hf_dir), tmp_path / "a")
    with pytest.raises(exporter.ExportError, match="no single \\[P, H\\] prompt"):
        exporter.export_peft(run / "prompts" / "best.npz", str(hf_dir), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_existing_output_and_wrong_base_model_width_are_refused(tiny, tmp_path):
    _, _, hf_dir = tiny
    np.save(tmp_path / "p.npy", _random_prompt(64))
    with pytest.raises(exporter.ExportError, match="width 64.*d_model 128"):
        exporter.export_peft(tmp_path / "p.npy", str(hf_dir), tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        exporter.export_peft(tmp_path / "p.npy", "t5-small", tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep"


def test_cli_end_to_end(tiny, tmp_path):
    _, _, hf_dir = tiny
    prompt = _random_prompt(128)
    np.save(tmp_path / "p.npy", prompt)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "prompt_tuning.export", "--prompt", str(tmp_path / "p.npy")]
    command += ["--format=peft", "--base_model", str(hf_dir), "--output", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(prompt_files.read_prompt_file(tmp_path / "out"), prompt)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "not empty" in again.stderr
    assert export_main.parse_args(command[3:]).format == "peft"
