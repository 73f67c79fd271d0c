"""Tests of the comparison's prompt-transfer protocol (tools/_compare_transfer.py, SPoT, MPT rows).

One tiny comparison (random tiny T5, 2 seeds, a few steps) of plain prompt tuning, the SPoT
rows and MPT on builtin_sentiment runs once per module. The checks: every source prompt is a
`[P, H]` `.npy` per task and seed; the target's own prompt equals the plain prompt-tuning run of the
same seed (same settings, so the same accuracy); a transfer run starts exactly from its
seed's source file; `spot_best` receives the source that the similarity measure, recomputed
here from the files, ranks first; the cache is reused; planning skips a method's own sources.
MPT: its source stage is distilled from the same seed's source prompts (in task-id order, with
the paper's weights), trains on the two sources' examples with their task ids, and the target
run starts exactly from the stage's shared prompt P* with `P*H + P + H` trainable parameters.
"""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning.analysis import similarity
from tests.tools_compare_methods_test import MODEL_GIN, H
from tools import _compare_lib as lib
from tools import _compare_transfer as transfer
from tools import compare_methods

SEEDS, LENGTH, TARGET = (0, 1), 3, "builtin_sentiment"
SOURCES = ("builtin_topic", "builtin_keyword")


@pytest.fixture(name="run", scope="module")
def _run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transfer")
    argv = [
        "--model_gin", MODEL_GIN, "--output", str(tmp / "out"),
        "--source_cache", str(tmp / "cache"),
        "--methods", "pt_random_uniform", "spot_topic", "spot_best", "mpt", "--tasks", TARGET,
        "--seeds", *map(str, SEEDS), "--steps", "4", "--batch_size", "8", "--eval_examples", "16",
        "--pool_size", "32", "--length", str(LENGTH), "--lr_sweep_methods",
        "--length_sweep_methods",
    ]  # fmt: skip
    seen = {"models": [], "batches": []}  # what reaches the MPT source stage's training
    train_run, run_batches = lib._train_run, lib.run_batches

    def spy_train(*args, model, make_optimizer):
        if model.distillation is not None:
            seen["models"].append(model)
        return train_run(*args, model=model, make_optimizer=make_optimizer)

    def spy_batches(pool, *args):
        batches = run_batches(pool, *args)
        if "task_ids" in pool:
            seen["batches"].append(batches)
        return batches

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lib, "_train_run", spy_train)
        patch.setattr(lib, "run_batches", spy_batches)
        assert compare_methods.main(argv) == 0
    results = json.loads((tmp / "out" / "results.json").read_text())
    cache = sorted((tmp / "cache").glob("*/*.npy"))
    stages = sorted((tmp / "cache").glob("*/mpt-*/shared_seed*.npy"))
    return dict(
        argv=argv, tmp=tmp, rows=results["runs"], cache=cache, results=results, stages=stages,
        seen=seen,
    )  # fmt: skip


def _row(run, method, seed):
    (row,) = [r for r in run["rows"] if r["method"] == method and r["seed"] == seed]
    return row


def test_source_prompts_are_cached_per_task_and_seed(run):
    names = {p.name for p in run["cache"]}
    assert names == {f"{t}_seed{s}.npy" for t in (*SOURCES, TARGET) for s in SEEDS}
    for path in run["cache"]:
        assert np.load(path).shape == (LENGTH, H)
    # Different seeds give different source prompts.
    topic = [np.load(p) for p in run["cache"] if p.name.startswith("builtin_topic")]
    assert not np.allclose(topic[0], topic[1])


def test_the_targets_own_prompt_is_the_plain_prompt_tuning_run(run):
    for seed in SEEDS:
        (path,) = [p for p in run["cache"] if p.name == f"{TARGET}_seed{seed}.npy"]
        info = json.loads(path.with_suffix(".json").read_text())
        assert info["accuracy"] == _row(run, "pt_random_uniform", seed)["accuracy"]


def test_rows_record_their_sources_and_best_is_the_most_similar(run):
    for seed in SEEDS:
        files = {p.name: p for p in run["cache"]}
        topic = files[f"builtin_topic_seed{seed}.npy"]
        assert _row(run, "spot_topic", seed)["source_files"] == [str(topic)]
        target = np.load(files[f"{TARGET}_seed{seed}.npy"])
        # SPoT's cosine of average tokens, recomputed here with numpy.
        scores = {}
        for name in SOURCES:
            source = np.load(files[f"{name}_seed{seed}.npy"])
            a, b = target.mean(0), source.mean(0)
            scores[name] = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        best = max(scores, key=scores.get)
        expected = str(files[f"{best}_seed{seed}.npy"])
        assert _row(run, "spot_best", seed)["source_files"] == [expected]
    table = (run["tmp"] / "out" / "table.md").read_text()
    assert "## Prompt transfer" in table and "| spot_best | builtin_sentiment |" in table


def test_a_transfer_run_starts_from_its_source_file_and_the_cache_is_reused(run, tmp_path):
    tasks, lengths = lib.load_tasks([TARGET, *SOURCES], 32, 16)
    frozen = lib.load_frozen(MODEL_GIN, str(tmp_path))
    method = lib.METHODS["spot_topic"]
    files = {s: p for s in SEEDS for p in run["cache"] if p.name == f"builtin_topic_seed{s}.npy"}
    build = lambda labels, source_files=(str(files[0]),): lib.build_module(
        frozen, method, LENGTH, labels, 1, source_files
    )
    runner = lib.MethodRunner(build, frozen, method.trainable_regex, lengths)
    for seed in SEEDS:
        initial = runner.initial(seed, tasks[TARGET].labels, (str(files[seed]),))
        (leaf,) = traverse_util.flatten_dict(initial).values()
        np.testing.assert_array_equal(np.asarray(leaf), np.load(files[seed]))
    with pytest.raises(ValueError, match="pass their prompt files"):
        lib.build_module(frozen, method, LENGTH)
    # The same settings and (random, seed 0) model find the cached prompts: nothing is retrained.
    before = {p: p.read_bytes() for p in run["cache"]}
    settings = dict(length=LENGTH, learning_rate=0.3, steps=4, batch_size=8, pool_size=32)
    found = transfer.train_sources(
        SOURCES, SEEDS, tasks=tasks, frozen=frozen, lengths=lengths, settings=settings,
        cache_dir=run["tmp"] / "cache",
    )  # fmt: skip
    assert sorted(found.files.values()) == sorted(p for p in before if "sentiment" not in p.name)
    assert sorted((run["tmp"] / "cache").glob("*/*.npy")) == run["cache"]
    assert {p: p.read_bytes() for p in run["cache"]} == before


def test_planning_skips_a_methods_own_sources():
    args = compare_methods.parse_args(
        ["--methods", "spot_topic", "spot_best", "--tasks", "builtin_topic", TARGET,
         "--seeds", "0", "--lr_sweep_methods", "--length_sweep_methods"]
    )  # fmt: skip
    plan = compare_methods.plan_runs(args)
    assert {(r["method"], r["task"]) for r in plan} == {
        ("spot_topic", TARGET), ("spot_best", TARGET),
    }  # fmt: skip
    runs = [(lib.METHODS[r["method"]], r["task"]) for r in plan]
    assert transfer.needed_tasks(runs) == [*SOURCES, TARGET]
    assert transfer.needed_tasks([(lib.METHODS["pt_random_uniform"], lib.MIXTURE)]) == []
    with pytest.raises(SystemExit):  # transfer methods are not swept
        compare_methods.parse_args(["--lr_sweep_methods", "spot_topic"])
    assert similarity.COSINE_AVERAGE == lib.METHODS["spot_best"].pick_source


def test_mpt_source_stage_is_distilled_from_the_seeds_source_prompts(run):
    assert [p.name for p in run["stages"]] == [f"shared_seed{s}.npy" for s in SEEDS]
    assert len(run["seen"]["models"]) == len(SEEDS)  # one distilled stage per seed
    files = {p.name: p for p in run["cache"]}
    for seed, path, model in zip(SEEDS, run["stages"], run["seen"]["models"]):
        info = json.loads(path.with_suffix(".json").read_text())
        teachers = [files[f"{name}_seed{seed}.npy"] for name in SOURCES]  # task-id order
        assert info["teachers"] == [str(t) for t in teachers]
        # Wang et al. (2023): L = L_PLM + λ (L_Logits + L_Hidden), λ = 0.9; plain KL (τ = 1).
        assert (info["kl_weight"], info["hidden_weight"], info["temperature"]) == (0.9, 0.9, 1.0)
        config = model.distillation
        assert (config.kl_weight, config.hidden_weight, config.temperature) == (0.9, 0.9, 1.0)
        assert config.teacher_prompts == tuple(str(t) for t in teachers)
        assert info["steps"] == 4 * len(SOURCES)  # steps x sources, as the multi-task rows
        assert set(info["accuracy"]) == set(SOURCES)
        assert np.load(path).shape == (LENGTH, H)
        assert _row(run, "mpt", seed)["source_files"] == [str(path)]
    assert not np.allclose(np.load(run["stages"][0]), np.load(run["stages"][1]))
    table = (run["tmp"] / "out" / "table.md").read_text()
    assert "Source stages" in table and "| mpt | 0 | builtin_topic" in table


def test_mpt_source_stage_trains_on_both_sources_with_their_task_ids(run):
    tasks, _ = lib.load_tasks([TARGET, *SOURCES], 32, 16)  # the run's tasks and shapes
    pools = [tasks[name].train for name in SOURCES]
    assert len(run["seen"]["batches"]) == len(SEEDS)
    for batches in run["seen"]["batches"]:
        ids = batches["task_ids"].reshape(-1)  # [K*B]
        inputs = batches["encoder_input_tokens"].reshape(len(ids), -1)
        assert set(ids.tolist()) <= {0, 1} and len(ids) == 4 * len(SOURCES) * 8
        for task_id, row in zip(ids, inputs):  # each example comes from its task id's pool
            assert (pools[task_id]["encoder_input_tokens"] == row).all(axis=1).any()


def test_mixture_pool_numbers_each_pool_by_its_position():
    a = {
        "encoder_input_tokens": np.array([[1, 2], [3, 4]]),
        "decoder_target_tokens": np.ones((2, 1)),
    }
    b = {"encoder_input_tokens": np.array([[5, 6]]), "decoder_target_tokens": np.zeros((1, 1))}
    pool = transfer.mixture_pool([a, b])
    np.testing.assert_array_equal(pool["encoder_input_tokens"], [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(pool["decoder_target_tokens"], [[1], [1], [0]])
    np.testing.assert_array_equal(pool["task_ids"], [0, 0, 1])
    assert pool["task_ids"].dtype == np.int32


def test_mpt_target_starts_from_the_shared_prompt(run, tmp_path):
    tasks, lengths = lib.load_tasks([TARGET], 32, 16)
    frozen = lib.load_frozen(MODEL_GIN, str(tmp_path))
    method = lib.METHODS["mpt"]
    first = (str(run["stages"][0]),)
    build = lambda labels, source_files=first: lib.build_module(
        frozen, method, LENGTH, labels, 1, source_files
    )
    runner = lib.MethodRunner(build, frozen, method.trainable_regex, lengths)
    for seed, path in zip(SEEDS, run["stages"]):
        initial = runner.initial(seed, tasks[TARGET].labels, (str(path),))
        prompt = jax.device_get(initial["encoder"]["prompt"])
        np.testing.assert_array_equal(prompt["shared"], np.load(path))
        np.testing.assert_array_equal(prompt["u"], np.ones((1, LENGTH)))
        np.testing.assert_array_equal(prompt["v"], np.ones((1, H)))
        # MPT's count per target task (Wang et al. 2023): P*H + P + H.
        assert runner.count(initial) == LENGTH * H + LENGTH + H == _row(run, "mpt", seed)["params"]
    planned = [(lib.METHODS[m], TARGET) for m in ("mpt", "attempt", "spot_topic")]
    assert transfer.needed_stages(planned) == [("mpt", SOURCES)]
