"""The decode benchmark's workers: each runs in its own process (`train_benchmark.spawn`).

- `run_weights` (jax, CPU): the random prompted model of a size, written twice into a folder:
  our parameter tree (`ours.npz`, "/"-joined names, float32) and the same weights as a
  transformers T5 state dict with the prompt (`hf.npz`, `prompt.npy`), so both systems do the
  same work on the same numbers. The output layer's EOS column is zeroed: EOS's logit is then 0
  while the largest of the others is positive, so neither system's greedy decoding stops early
  (the random model would otherwise emit EOS at random) and both decode exactly the asked
  number of tokens without any change to either decoder.
- `run_jax_decode`: ours, `predict.predictor.Predictor`'s compiled program (the one the
  evaluation loop and `pt-serve` run) for greedy decoding or for scoring the label batch of rank
  classification; imports jax, flax and this library only (no seqio, TensorFlow or gin).
- `run_peft_decode`: HF PEFT prompt tuning of the same weights: `generate` (greedy, KV cache,
  `min_new_tokens = max_new_tokens`) or the label rows scored by one forward pass; modes eager,
  bfloat16 autocast, bfloat16 cast (`model.to`), each optionally under `torch.compile` (scoring
  only; see `decode_benchmark`). Imports torch, transformers and peft only.

Each returns a JSON-able dict: the `benchmark.time_steps` lists, peak RSS (and GPU memory on
cuda), the outputs of the last step (tokens `[B, N]` or label scores `[B, C]`) and the new
tokens per row.

    python -m prompt_tuning.perf.decode_workers KIND SPEC_JSON

Letters: B batch, T input length, N new tokens, C labels, S label length (tokens, EOS included).
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prompt_tuning.parallel import host_memory
from prompt_tuning.perf import benchmark
from prompt_tuning.perf.workers import model_config

EOS_ID = 1  # T5's end of sequence; decoder start and padding are 0.
OURS_FILE, HF_FILE, PROMPT_FILE = "ours.npz", "hf.npz", "prompt.npy"


def inputs_and_labels(spec: Mapping[str, Any], vocab_size: int) -> tuple[Any, Any]:
    """The batch's encoder inputs `[B, T]` and the label strings' tokens `[C, S]` (random ids,
    then EOS), the same in every worker of a run."""
    import numpy as np  # noqa: PLC0415

    batch = benchmark.random_batch(spec["batch"], spec["input_length"], 1, vocab_size, spec["seed"])
    rng = np.random.default_rng(spec["seed"] + 1)
    words = rng.integers(2, vocab_size, (spec["num_labels"], spec["label_length"] - 1))
    labels = np.concatenate([words, np.full((spec["num_labels"], 1), EOS_ID)], axis=1)
    return batch["encoder_input_tokens"], labels.astype(np.int32)


def new_tokens_per_row(tokens: Any) -> list[int]:
    """Each row's generated length: up to and including its first EOS, else all `[B, N]`."""
    out = []
    for row in tokens.tolist():
        out.append(row.index(EOS_ID) + 1 if EOS_ID in row else len(row))
    return out


def run_weights(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Writes the random prompted model of `spec["size"]` in both formats into `spec["path"]`."""
    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from prompt_tuning import prompts, t5  # noqa: PLC0415
    from prompt_tuning.t5 import checkpoint_tree, hf_format  # noqa: PLC0415
    from prompt_tuning.train.model import PromptModel  # noqa: PLC0415

    config = model_config(spec["size"], 0.0)
    model = PromptModel(t5.EncoderDecoder(config, prompts.Prompt(spec["prompt_length"])))
    init = jax.jit(model.init_boxed, static_argnums=(1, 2))
    params = jax.device_get(nn.unbox(init(jax.random.key(spec["seed"]), 8, 4)))
    kernel = np.array(params["decoder"]["logits_dense"]["kernel"])  # [H, V]
    kernel[:, EOS_ID] = 0.0
    params["decoder"]["logits_dense"]["kernel"] = kernel
    flat = {k: np.asarray(v, np.float32) for k, v in checkpoint_tree.flatten(params).items()}
    folder = pathlib.Path(spec["path"])
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / OURS_FILE, **flat)
    prompt = params["encoder"].pop("prompt")["prompt"]  # [P, H]
    np.savez(folder / HF_FILE, **hf_format.params_to_hf_state_dict(params, config))
    np.save(folder / PROMPT_FILE, np.asarray(prompt, np.float32))
    return {"path": str(folder), "params": len(flat)}


def _load_ours(path: pathlib.Path, dtype: str) -> dict[str, Any]:
    """Our parameter tree from `ours.npz`: frozen weights in `dtype` (FROZEN_DTYPE, as the
    evaluation loads them), the prompt in float32 (trainable parameters stay float32)."""
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from prompt_tuning.t5 import checkpoint_tree  # noqa: PLC0415

    with np.load(path / OURS_FILE) as stored:
        flat = {
            name: jnp.asarray(
                stored[name], jnp.float32 if name.startswith("encoder/prompt/") else dtype
            )
            for name in stored.files
        }
    return checkpoint_tree.unflatten(flat)


def _gpu_peak_gib_jax() -> float | None:
    import jax  # noqa: PLC0415

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return peak / 2**30 if peak is not None else None


def run_jax_decode(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Times ours: `Predictor`'s compiled greedy or score program on this process's device."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from prompt_tuning import prompts, t5  # noqa: PLC0415
    from prompt_tuning.predict import predictor as predictor_lib  # noqa: PLC0415
    from prompt_tuning.predict import rank_classification  # noqa: PLC0415
    from prompt_tuning.train.model import PromptModel  # noqa: PLC0415

    import_rss = benchmark.peak_rss_gib()
    config = model_config(spec["size"], 0.0, spec["dtype"])
    model = PromptModel(t5.EncoderDecoder(config, prompts.Prompt(spec["prompt_length"])))
    params = jax.device_put(_load_ours(pathlib.Path(spec["weights"]), spec["dtype"]))
    inputs, labels = inputs_and_labels(spec, config.vocab_size)
    predictor = predictor_lib.Predictor(model, "greedy", max_decode_length=spec["new_tokens"])
    if spec["task"] == "greedy":
        batch = {"encoder_input_tokens": inputs}
        kind, length = "greedy", spec["new_tokens"]
    else:
        # As `Predictor.label_scores` (evaluation's rank classification): B inputs, B*C targets.
        batch = rank_classification.label_batch(
            {"encoder_input_tokens": inputs}, labels, repeat_inputs=False
        )
        kind, length = "score", 0
    batch = jax.device_put(batch)
    benchmark.stage(f"weights and {kind} batch on {jax.devices()[0]}")
    start = time.perf_counter()
    program = predictor.compile(kind, params, batch, max_decode_length=length)
    compile_s = time.perf_counter() - start
    benchmark.stage(f"{kind} program compiled in {compile_s:.1f} s")
    host_memory.release_free_memory()
    outputs: dict[str, Any] = {}

    def run_step() -> float:
        out = jax.device_get(program(params, batch))  # blocks until the device is done
        if kind == "greedy":
            outputs["tokens"] = np.asarray(out[0])  # [B, N]
        else:
            scores = np.asarray(out).reshape(len(inputs), len(labels))  # [B, C]
            outputs["scores"], outputs["choices"] = scores, np.argmax(scores, axis=1)
        return 0.0

    result = {
        "compile_s": compile_s,
        **benchmark.time_steps(run_step, spec["warmup"], spec["steps"]),
        "import_rss_gib": import_rss,
        "peak_rss_gib": benchmark.peak_rss_gib(),
        "gpu_peak_gib": _gpu_peak_gib_jax() if spec["device"] != "cpu" else None,
        "jax_device": str(jax.devices()[0]),
        "imported": benchmark.heavy_modules() + [m for m in ("gin",) if m in sys.modules],
    }
    return result | _outputs_json(outputs)


def _outputs_json(outputs: Mapping[str, Any]) -> dict[str, Any]:
    if "tokens" in outputs:
        tokens = outputs["tokens"]
        return {"tokens": tokens.tolist(), "new_tokens": new_tokens_per_row(tokens)}
    return {"scores": outputs["scores"].tolist(), "choices": outputs["choices"].tolist()}


def _peft_model(spec: Mapping[str, Any], torch: Any) -> tuple[Any, list[str]]:
    """The PEFT model with the stored weights and prompt (its missing keys are returned)."""
    import numpy as np  # noqa: PLC0415
    import peft  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    folder = pathlib.Path(spec["weights"])
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config.from_dict(spec["hf_config"])
    )
    with np.load(folder / HF_FILE) as stored:
        state = {name: torch.from_numpy(stored[name]) for name in stored.files}
    missing = model.load_state_dict(state, strict=False).missing_keys
    config = peft.PromptTuningConfig(
        task_type=peft.TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=spec["prompt_length"],
        num_transformer_submodules=1,  # encoder only, as ours (Lester et al.)
    )
    model = peft.get_peft_model(model, config)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(
            torch.from_numpy(np.load(folder / PROMPT_FILE))
        )
    model.eval()
    # transformers 5 ties T5's lm_head differently; only the agreement check depends on it.
    return model, [k for k in missing if not k.endswith("embed_tokens.weight")]


def run_peft_decode(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Times PEFT's `generate` or label scoring in mode `spec["mode"]` (see the module doc)."""
    import peft  # noqa: F401, PLC0415 (loaded before import_rss is read)
    import torch  # noqa: PLC0415
    import transformers  # noqa: F401, PLC0415 (loaded before import_rss is read)

    from prompt_tuning.predict import rank_classification  # noqa: PLC0415 (numpy only)

    import_rss = benchmark.peak_rss_gib()
    device, mode = spec["device"], spec["mode"]
    model, missing = _peft_model(spec, torch)
    if "cast" in mode.split("-"):
        model = model.to(torch.bfloat16)
    model = model.to(device)
    inputs, labels = inputs_and_labels(spec, spec["hf_config"]["vocab_size"])
    autocast = "autocast" in mode.split("-")
    b, c = len(inputs), len(labels)

    def context() -> Any:
        if autocast:
            return torch.autocast(device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    outputs: dict[str, Any] = {}
    if spec["task"] == "greedy":
        ids = torch.from_numpy(inputs).long().to(device)
        mask = torch.ones_like(ids)
        n = spec["new_tokens"]
        options = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1)

        def run_step() -> float:
            with torch.inference_mode(), context():
                out = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **options)
            sync()
            outputs["tokens"] = out[:, 1:].cpu().numpy()  # without the decoder start token
            return 0.0

    else:
        rows = rank_classification.label_batch({"encoder_input_tokens": inputs}, labels)
        tensor = lambda name: torch.from_numpy(rows[name]).long().to(device)  # noqa: E731
        ids, targets, shifted = map(
            tensor, ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens")
        )  # [B*C, T], [B*C, S], [B*C, S]
        mask = torch.ones_like(ids)

        def score(ids: Any, mask: Any, shifted: Any, targets: Any) -> Any:
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=shifted).logits
            logp = torch.log_softmax(logits.float(), -1)  # [B*C, S, V]
            return logp.gather(-1, targets[..., None])[..., 0].sum(-1)  # [B*C]

        scorer = torch.compile(score) if mode.startswith("compile") else score

        def run_step() -> float:
            with torch.inference_mode(), context():
                scores = scorer(ids, mask, shifted, targets).reshape(b, c)
            sync()
            outputs["scores"] = scores.float().cpu().numpy()
            outputs["choices"] = outputs["scores"].argmax(1)
            return 0.0

    compile_s = None
    if mode.startswith("compile"):  # the first call compiles: timed apart, not a warm-up step
        start = time.perf_counter()
        run_step()
        compile_s = time.perf_counter() - start
    result = {
        "compile_s": compile_s,
        **benchmark.time_steps(run_step, spec["warmup"], spec["steps"]),
        "missing_keys": missing,
        "import_rss_gib": import_rss,
        **benchmark.peft_process_facts(),
        "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    return result | _outputs_json(outputs)


WORKERS = {"weights": run_weights, "jax": run_jax_decode, "peft": run_peft_decode}


def main(argv: Sequence[str] | None = None) -> None:
    """Runs one worker: `python -m prompt_tuning.perf.decode_workers KIND SPEC_JSON`."""
    benchmark.worker_main(WORKERS, argv)


if __name__ == "__main__":
    main()
