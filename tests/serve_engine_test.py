"""Serving internals: the prompt-masked bank, compiled programs (also sharded), registry, folder.

Equality is checked against the plain `Prompt` model run alone (the independent reference: the
prompt prepended as in training), never against the serving code itself.
"""

import logging
import threading

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning.parallel import partitioning
from prompt_tuning.prompts import Prompt, RaggedPromptBank
from prompt_tuning.prompts.ragged_bank import right_align
from prompt_tuning.serve import batcher as batcher_lib
from prompt_tuning.serve import engine as engine_lib
from prompt_tuning.serve import loading, registry, service
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import decoding
from prompt_tuning.t5.network import EncoderDecoder

CONFIG = t5_config.tiny(vocab_size=64)
H = CONFIG.emb_dim
LENGTHS = (3, 7)  # two prompts of different lengths, one bank of P = 8
P, C = 8, 4
# Jitted decoding (model and lengths static), as the library's predictors run it.
greedy_decode = jax.jit(decoding.greedy_decode, static_argnums=(0, 3))
beam_search = jax.jit(decoding.beam_search, static_argnums=(0, 3, 4))
score = jax.jit(decoding.score, static_argnums=(0,))


@jax.jit(static_argnums=(0,))
def encode(model, params, tokens, task_ids=None):
    return model.apply({"params": params}, tokens, task_ids, method="encode")


@pytest.fixture(scope="module")
def frozen():
    tokens = np.ones((1, 4), np.int32)
    init = jax.jit(lambda key: EncoderDecoder(CONFIG).init(key, tokens, tokens, tokens))
    return nn.unbox(init(jax.random.key(0))["params"])


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(p, H)).astype(np.float32) for p in LENGTHS]


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, 64, size=(2, 10)).astype(np.int32)
    tokens[0, 6:], tokens[1, 8:] = 0, 0
    return tokens


def _alone(frozen, prompt):
    """The model with one plain prompt, as trained and as pt-infer runs it."""
    model = EncoderDecoder(CONFIG, prompt=Prompt(len(prompt)))
    encoder = dict(frozen["encoder"], prompt={"prompt": prompt})
    return model, dict(frozen, encoder=encoder)


def _bank(frozen, prompts, lengths=None):
    table = np.zeros((C, P, H), np.float32)
    for i, prompt in enumerate(prompts):
        table[i] = right_align(prompt, P)
    lengths = np.array([len(p) for p in prompts] + [0] * (C - len(prompts)), np.int32)
    model = EncoderDecoder(CONFIG, prompt=RaggedPromptBank(C, P, H))
    encoder = dict(frozen["encoder"], prompt={"prompt": table, "lengths": lengths})
    return model, dict(frozen, encoder=encoder), table


def test_mixed_lengths_in_one_batch_equal_each_prompt_alone(frozen, prompts, inputs):
    """Encodings at valid positions and greedy outputs (beam and scores: serve_http_test)."""
    model, params, _ = _bank(frozen, prompts)
    rows = np.array([0, 1], np.int32)
    encoded, mask = encode(model, params, inputs, rows)
    greedy = greedy_decode(model, params, inputs, 6, task_ids=rows)
    for i, prompt in enumerate(prompts):
        alone, alone_params = _alone(frozen, prompt)
        x = inputs[i : i + 1]
        ref, ref_mask = encode(alone, alone_params, x)
        np.testing.assert_allclose(
            np.asarray(encoded[i])[np.asarray(mask[i])],
            np.asarray(ref[0])[np.asarray(ref_mask[0])],
            atol=1e-5,
        )
        np.testing.assert_array_equal(greedy[i], greedy_decode(alone, alone_params, x, 6)[0])


def test_without_the_mask_a_short_prompt_would_change_its_outputs(frozen, prompts, inputs):
    """Control: the zero rows before a short prompt matter unless masked."""
    model, params, table = _bank(frozen, prompts)
    unmasked = dict(params["encoder"]["prompt"], lengths=np.full((C,), P, np.int32))
    params = dict(params, encoder=dict(params["encoder"], prompt=unmasked))
    encoded, _ = encode(model, params, inputs, np.array([0, 1]))
    alone, alone_params = _alone(frozen, prompts[0])
    ref, _ = encode(alone, alone_params, inputs[:1])
    p = LENGTHS[0]
    assert np.abs(np.asarray(encoded[0, P - p : P + 6]) - np.asarray(ref[0, : p + 6])).max() > 1e-3


def test_beam_search_with_per_row_lengths_equals_separate_searches(frozen, prompts, inputs):
    model, params = _alone(frozen, prompts[1])
    lengths = np.array([2, 6], np.int32)
    tokens, scores = beam_search(model, params, inputs, 6, 3, lengths=lengths)
    for i, length in enumerate(lengths):
        ref, ref_scores = beam_search(model, params, inputs[i : i + 1], int(length), 3)
        np.testing.assert_array_equal(tokens[i, :, :length], ref[0])
        assert not np.any(tokens[i, :, length:])
        np.testing.assert_allclose(scores[i], ref_scores[0], rtol=1e-5)


def test_greedy_with_per_row_lengths_keeps_each_rows_prefix(frozen, prompts, inputs):
    """A row stops after its own length; its tokens are the first ones of a full-length decode."""
    model, params = _alone(frozen, prompts[0])
    full = np.asarray(greedy_decode(model, params, inputs, 6))
    lengths = np.array([2, 5], np.int32)
    short = np.asarray(greedy_decode(model, params, inputs, 6, lengths=lengths))
    for i, length in enumerate(lengths):
        np.testing.assert_array_equal(short[i, :length], full[i, :length])
        assert not np.any(short[i, length:])
    assert np.any(full[0, 2:])  # control: the full decode does go on past row 0's length


def _serving(config, params, prompts, inputs):
    """An engine over `params`, a registry holding `prompts` as p0, p1, ..., and the request rows:
    (engine, bank snapshot, unpadded token rows, the bank rows of p0 and p1)."""
    buckets = engine_lib.Buckets((4,), (16,), (8,), (4,))
    engine = engine_lib.Engine(EncoderDecoder(config), params, buckets, beam_sizes=(2,))
    reg = registry.PromptRegistry(H, C, P, lambda a: jax.device_put(a, engine.replicated()))
    for i, prompt in enumerate(prompts):
        reg.add(f"p{i}", prompt, "test")
    bank = reg.snapshot()
    tokens = [row[row > 0] for row in inputs]
    return engine, bank, tokens, [bank.slots["p0"], bank.slots["p1"]]


@pytest.mark.parametrize("mesh_shape", [None, (2, 2)])
def test_engine_serves_rows_like_each_prompt_alone(frozen, prompts, inputs, mesh_shape):
    """Padded buckets and, on a (data 2, model 2) mesh, sharded params give the same outputs."""
    params = frozen
    if mesh_shape is not None:
        mesh = partitioning.make_mesh(mesh_shape[1], jax.devices()[: mesh_shape[0] * mesh_shape[1]])
        boxed = jax.eval_shape(
            lambda: EncoderDecoder(CONFIG).init(jax.random.key(0), *[np.ones((1, 4), np.int32)] * 3)
        )["params"]
        params = jax.device_put(frozen, partitioning.params_shardings(boxed, mesh))
    engine, bank, tokens, rows = _serving(CONFIG, params, prompts, inputs)
    out, _ = engine.generate(bank, tokens, rows, [6, 4])
    for i, prompt in enumerate(prompts):
        alone, alone_params = _alone(frozen, prompt)
        ref = greedy_decode(alone, alone_params, inputs[i : i + 1], 6)[0]
        np.testing.assert_array_equal(out[i], np.asarray(ref)[: [6, 4][i]])
    assert engine.compiles == {"new_shape": 1}
    engine.generate(bank, tokens[:1], rows[:1], [3])  # same buckets: no new program
    assert engine.num_programs() == 1
    if mesh_shape is not None:
        assert {d.id for d in engine.params["encoder"]["encoder_norm"]["scale"].devices()} == {
            d.id for d in mesh.devices.flat
        }


def test_engine_scores_each_input_once_for_its_labels_like_each_prompt_alone(
    frozen, prompts, inputs
):
    """classify's score programs: B inputs and L label rows each (label-count buckets 2 and 4),
    labels beyond the widest bucket in pieces; every score equals the plain-prompt model scoring
    that label alone with its input (one encoder row per label)."""
    buckets = engine_lib.Buckets((4,), (16,), (8,), (4,), label_count=(2, 4))
    assert buckets.score_inputs(2) == (2,) and buckets.score_inputs(4) == (1,)
    compiled = []
    on_compile = lambda key, reason, seconds: compiled.append(key.label())  # noqa: E731
    engine = engine_lib.Engine(EncoderDecoder(CONFIG), frozen, buckets, on_compile=on_compile)
    reg = registry.PromptRegistry(H, C, P, lambda a: jax.device_put(a, engine.replicated()))
    for i, prompt in enumerate(prompts):
        reg.add(f"p{i}", prompt, "test")
    bank = reg.snapshot()
    rng = np.random.default_rng(5)
    labels = lambda n: [np.append(rng.integers(3, 64, rng.integers(1, 4)), 1) for _ in range(n)]
    # (input, prompt, labels): 1 label (L=2), 3 labels (L=4), 6 labels (pieces of 4 and 2).
    requests = [(0, 0, labels(1)), (1, 1, labels(3)), (0, 1, labels(6))]
    tokens = [inputs[i][inputs[i] > 0] for i, _, _ in requests]
    slots = [bank.slots[f"p{p}"] for _, p, _ in requests]
    out = engine.score(bank, tokens, slots, [targets for _, _, targets in requests])
    assert [len(row) for row in out] == [1, 3, 6]
    for (i, p, targets), row in zip(requests, out):
        model, params = _alone(frozen, prompts[p])
        padded = np.zeros((len(targets), 4), np.int32)
        for j, target in enumerate(targets):
            padded[j, : len(target)] = target
        shifted = np.pad(padded, ((0, 0), (1, 0)))[:, :-1]
        encoder = np.repeat(inputs[i : i + 1], len(targets), axis=0)
        expected = score(model, params, encoder, shifted, padded)
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-5)
    # L=2 (2 pieces in one call of B=2), L=4 (2 pieces, B=1 each): two programs.
    assert sorted(compiled) == ["score B=1 T=16 S=4 L=4", "score B=2 T=16 S=4 L=2"]


def test_registry_add_replace_remove_and_resize():
    placed = []
    reg = registry.PromptRegistry(4, 2, 3, lambda a: placed.append(a.shape) or a, max_length=6)
    first = reg.add("a", np.ones((2, 4)), "x")
    assert (first.replaced, first.resized, first.shape) == (False, False, (2, 3))
    table = reg.snapshot().table
    np.testing.assert_array_equal(table[0], [[0] * 4, [1] * 4, [1] * 4])  # right-aligned
    assert reg.add("a", 2 * np.ones((3, 4)), "y").replaced
    reg.add("b", np.ones((1, 4)), "z")
    grown = reg.add("c", 3 * np.ones((5, 4)), "w")  # third prompt, longer than P: both grow
    assert grown.resized and grown.shape == (4, 5)
    snap = reg.snapshot()
    np.testing.assert_array_equal(snap.table[snap.slots["a"], 2:], 2 * np.ones((3, 4)))
    np.testing.assert_array_equal(snap.lengths[:3], [3, 1, 5])
    reg.remove("b")
    assert reg.add("d", np.ones((2, 4)), "v").info.slot == 1  # the freed row is reused
    with pytest.raises(registry.PromptError, match=r"shape \[2, 5\].*\[p, 4\]"):
        reg.add("e", np.ones((2, 5)), "bad")
    with pytest.raises(registry.PromptError, match="dtype int64"):
        reg.add("e", np.ones((2, 4), np.int64), "bad")
    with pytest.raises(registry.PromptError, match=r"shape \[7, 4\].*p <= 6"):
        reg.add("e", np.ones((7, 4)), "bad")
    with pytest.raises(registry.PromptError, match="NaN"):
        reg.add("e", np.full((2, 4), np.nan), "bad")
    with pytest.raises(registry.PromptError, match="not a readable .npy"):
        registry.parse_npy(b"\x93NUMPY garbage", "upload")


def test_scan_prompt_dir_reads_files_and_runs_and_refuses_idpg(tmp_path):
    np.save(tmp_path / "task_a.npy", np.ones((2, 4), np.float32))
    (tmp_path / "run_b" / "prompts").mkdir(parents=True)
    np.save(tmp_path / "run_b" / "prompts" / "step_10.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "run_b" / "prompts" / "step_200.npy", np.ones((3, 4), np.float32))
    (tmp_path / "run_c" / "prompts").mkdir(parents=True)
    np.save(tmp_path / "run_c" / "prompts" / "best.npy", 2 * np.ones((3, 4), np.float32))
    np.save(tmp_path / "run_c" / "prompts" / "step_300.npy", np.ones((3, 4), np.float32))
    (tmp_path / "idpg" / "prompts").mkdir(parents=True)  # an IDPG run exports parameters
    (tmp_path / "idpg" / "config.gin").write_text("PROMPT = @prompts.InstancePrompt()\n")
    np.savez(tmp_path / "idpg" / "prompts" / "best.npz", prompt=np.ones((3, 4), np.float32))
    (tmp_path / "tasks3" / "prompts").mkdir(parents=True)  # a multi-task export [N, P, H]
    np.save(tmp_path / "tasks3" / "prompts" / "best.npy", np.ones((3, 2, 4), np.float32))
    (tmp_path / "corrupt.npy").write_bytes(b"not numpy")
    (tmp_path / "notes.txt").write_text("ignored")
    found = {f.name: f for f in loading.scan_prompt_dir(tmp_path)}
    assert sorted(found) == ["corrupt", "idpg", "run_b", "run_c", "task_a", "tasks3"]
    assert found["run_b"].source.endswith("step_200.npy") and found["run_b"].prompt[0, 0] == 1
    assert found["run_c"].source.endswith("best.npy") and found["run_c"].prompt[0, 0] == 2
    assert "instance-dependent" in found["idpg"].reason and found["idpg"].prompt is None
    assert "corrupt.npy is not a NumPy array file" in found["corrupt"].reason
    assert "3 task prompts" in found["tasks3"].reason and "--task_id" in found["tasks3"].reason
    with pytest.raises(FileNotFoundError, match="PROMPT_DIR"):
        loading.scan_prompt_dir(tmp_path / "missing")


def _items(prompts, kind="greedy"):
    return [batcher_lib.Item(kind, p, np.ones(3, np.int32)) for p in prompts]


@pytest.mark.parametrize("policy", ["mixed", "per_prompt"])
def test_batcher_groups_by_policy_bounds_the_queue_and_drains(policy):
    gate, entered, batches = threading.Event(), threading.Event(), []

    def run(items):
        entered.set()
        gate.wait(10)
        batches.append([item.prompt for item in items])
        return [item.prompt for item in items]

    batcher = batcher_lib.Batcher(run, max_rows=8, policy=policy, max_wait_s=0.2, max_queue_rows=6)
    first = _items(["a"])
    batcher.submit(first)
    assert entered.wait(10)  # the worker took `first` and waits at the gate
    queued = _items(["a", "b", "a", "b"]) + _items(["c"], kind="score")
    batcher.submit(queued)
    with pytest.raises(batcher_lib.QueueFull, match="bound is 6"):
        batcher.submit(_items(["a", "a"]))
    gate.set()
    assert batcher.stop(10)  # drains everything queued before stopping
    with pytest.raises(batcher_lib.Stopped):
        batcher.submit(_items(["a"]))
    assert all(item.future.result(0)[0] == item.prompt for item in first + queued)
    expected = [["a"], ["a", "b", "a", "b"], ["c"]]
    if policy == "per_prompt":
        expected = [["a"], ["a", "a"], ["b", "b"], ["c"]]
    assert batches == expected


def test_growing_the_bank_is_one_logged_recompilation(frozen, prompts, inputs, caplog):
    config = service.ServiceConfig(
        buckets=engine_lib.Buckets((2,), (16,), (8,), (4,)), bank_capacity=1, warmup=("greedy",)
    )
    first = loading.Found("p0", "test", prompts[0])
    svc = service.Service(EncoderDecoder(CONFIG), frozen, None, config, [first])
    tokens = [row[row > 0] for row in inputs]

    def greedy(name, i):
        bank = svc.registry.snapshot()
        return svc.engine.generate(bank, [tokens[i]], [bank.slots[name]], [6])[0][0]

    try:
        assert svc.wait_ready(120)  # the warm-up compiles in the background
        assert svc.engine.compiles == {"warmup": 1} and svc.registry.shape == (1, LENGTHS[0])
        before = greedy("p0", 0)
        with caplog.at_level(logging.WARNING):
            grown = svc.put_prompt("p1", prompts[1], "test")  # a 2nd row, and longer than P
        assert grown.resized and grown.shape == (2, LENGTHS[1])
        assert svc.engine.compiles == {"warmup": 1, "bank_resize": 1}
        assert "resized the bank from (C, P) = (1, 3) to (2, 7)" in caplog.text
        np.testing.assert_array_equal(greedy("p0", 0), before)  # still right-aligned
        alone, alone_params = _alone(frozen, prompts[1])
        ref = greedy_decode(alone, alone_params, inputs[1:2], 6)[0]
        np.testing.assert_array_equal(greedy("p1", 1), ref)
        assert not svc.put_prompt("p1", 2 * prompts[1], "again").resized  # replace: same shape
        assert svc.engine.compiles == {"warmup": 1, "bank_resize": 1}
    finally:
        svc.close()


def test_engine_serves_a_mixed_precision_model_like_each_prompt_alone(frozen, prompts, inputs):
    """ACTIVATION_DTYPE = FROZEN_DTYPE = "bfloat16" (runs/prompt_finetune.gin's precision): the
    prompt-masked bank in a bfloat16 model gives each row the outputs of its prompt alone."""
    from prompt_tuning.t5 import precision  # noqa: PLC0415

    config = CONFIG.replace(dtype="bfloat16")
    params = precision.cast_matmul_weights(frozen, "bfloat16")  # FROZEN_DTYPE
    engine, bank, tokens, rows = _serving(config, params, prompts, inputs)
    out, _ = engine.generate(bank, tokens, rows, [6, 6])
    for i, prompt in enumerate(prompts):
        model = EncoderDecoder(config, prompt=Prompt(len(prompt)))
        alone = dict(params, encoder=dict(params["encoder"], prompt={"prompt": prompt}))
        ref = greedy_decode(model, alone, inputs[i : i + 1], 6)[0]
        np.testing.assert_array_equal(out[i], np.asarray(ref))
