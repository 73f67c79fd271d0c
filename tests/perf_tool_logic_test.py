"""The measurement tools' logic in `prompt_tuning.perf`, without compiling or serving anything.

`aot_sweep.sweep_specs` (which meshes and programs `tools/aot_memory.py` compiles),
`aot_sweep.read_results` (its `--table` input), `train_benchmark.specs` (the alternating run
order of `tools/benchmark_train.py`), `serve_load.check_loopback` (local servers only),
`serve_load.request_body` (what its clients send, against the server's request schemas) and
`serve_ready.cpu_seconds` (a server's CPU time).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import pytest

from prompt_tuning.perf import aot_sweep, serve_load, serve_ready, train_benchmark


def _sweep(**overrides) -> argparse.Namespace:
    flags = dict(
        sizes=["tiny"],
        devices=[8, 6],
        partitions=[1, 4, 3],
        remat=["none", "full"],
        activation_dtype=["float32"],
        programs=["train", "decode"],
        frozen_dtype="bfloat16",
        batch=8,
        inputs=32,
        prompt=4,
        targets=4,
        dropout=0.1,
        xla="simulate",
        activation_partitioning_dims=2,
    )
    return argparse.Namespace(**(flags | overrides))


def test_sweep_skips_model_axes_that_do_not_divide_devices_and_heads():
    # The tiny T5 has 4 heads: a model axis of 3 divides 6 devices but not the heads; 4 does
    # not divide 6 devices.
    specs = aot_sweep.sweep_specs(_sweep())
    meshes = {(s["devices"], s["partitions"]) for s in specs}
    assert meshes == {(8, 1), (8, 4), (6, 1)}
    # Decoding has no backward pass: one decode program per mesh, with the first remat setting.
    decode = [s for s in specs if s["program"] == "decode"]
    assert len(decode) == 3 and {s["remat"] for s in decode} == {"none"}
    assert len([s for s in specs if s["program"] == "train"]) == 6
    assert list(specs[0]) == [
        "size",
        "devices",
        "partitions",
        "remat",
        "activation_dtype",
        "frozen_dtype",
        "program",
        "batch",
        "inputs",
        "prompt",
        "targets",
        "dropout",
        "xla",
        "activation_partitioning_dims",
    ]


def test_read_results_takes_output_files_and_logs(tmp_path):
    rows = [{"size": "tiny", "devices": 8}, {"size": "tiny", "devices": 6}]
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(rows, indent=1))
    log = tmp_path / "run.log"
    log.write_text("compiling ...\n" + json.dumps(rows[1]) + "\nWARNING: slow\n")
    assert aot_sweep.read_results([str(saved), str(log)]) == rows + rows[1:]


def test_benchmark_runs_alternate_ours_and_peft_per_precision():
    settings = train_benchmark.BenchmarkSettings(
        dtypes=("float32", "bfloat16"), vs_peft=True, remat_layers=("none", "full")
    )
    runs = train_benchmark.specs(settings, "tiny", 2)
    order = [
        (kind, spec["dtype"], spec.get("remat_layers") or spec["peft_mode"]) for kind, spec in runs
    ]
    # Per precision: ours, then PEFT eager, then PEFT compiled (its four modes in all).
    assert order == [
        ("jax", "float32", "none"),
        ("peft", "float32", "eager"),
        ("peft", "float32", "compiled"),
        ("jax", "bfloat16", "none"),
        ("peft", "bfloat16", "eager"),
        ("peft", "bfloat16", "compiled"),
        ("jax", "float32", "full"),
        ("jax", "bfloat16", "full"),
    ]
    assert {spec["device"] for _, spec in runs} == {"cpu"}
    # frozen_dtype "auto" follows the activation dtype; PEFT gets the transformers config.
    assert [spec.get("frozen_dtype") for kind, spec in runs if kind == "jax"] == [
        "float32",
        "bfloat16",
        "float32",
        "bfloat16",
    ]
    # (the tiny T5: H = 32, V = 128)
    peft = [spec["hf_config"] for kind, spec in runs if kind == "peft"]
    assert {(c["d_model"], c["vocab_size"]) for c in peft} == {(32, 128)} and len(peft) == 4


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.2", "::1", "localhost"])
def test_loopback_hosts_pass(host):
    serve_load.check_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "0.0.0.0", "example.com"])
def test_other_hosts_are_refused(host):
    with pytest.raises(SystemExit, match="not a loopback address"):
        serve_load.check_loopback(host)


@pytest.mark.parametrize("endpoint", serve_load.ENDPOINTS)
def test_load_requests_are_what_the_server_accepts(endpoint):
    from prompt_tuning.serve import app  # noqa: PLC0415 (fastapi: the serve extra)

    args = argparse.Namespace(endpoint=endpoint, max_length=8)
    body = serve_load.request_body(args, "load_003", "one two three", ["yes", "no"])
    schema = {"generate": app.GenerateRequest, "classify": app.ClassifyRequest}[endpoint]
    request = schema.model_validate(body)  # extra fields are refused
    assert (request.prompt, request.inputs) == ("load_003", "one two three")
    if endpoint == "generate":
        assert (request.method, request.max_length) == ("greedy", 8)
    else:
        assert request.labels == ["yes", "no"]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="no /proc (not Linux)")
def test_cpu_seconds_of_a_process_agree_with_os_times():
    sum(i * i for i in range(2_000_000))  # some CPU time to count
    before = os.times()
    got = serve_ready.cpu_seconds(os.getpid())
    after = os.times()
    # /proc counts whole clock ticks: within one tick (plus the gap between the reads).
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert before.user + before.system - tick <= got <= after.user + after.system + tick


def test_cpu_seconds_of_no_process_is_none():
    assert serve_ready.cpu_seconds(2**22 + 1) is None  # above Linux's largest pid


def _run_probe(probe: str) -> subprocess.CompletedProcess:
    """Runs `python -c probe` in a fresh interpreter from this checkout."""
    return subprocess.run(
        [sys.executable, "-c", probe],
        cwd=pathlib.Path(__file__).resolve().parents[1],  # this checkout's prompt_tuning first
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_importing_the_tool_modules_loads_no_heavy_library():
    # A benchmark worker must load only its own system's libraries (jax or torch), and library
    # code never imports gin or tasks.
    modules = "workers, train_benchmark, matmul, aot_sweep, loading, serve_load, serve_ready"
    probe = (
        f"import sys\nfrom prompt_tuning.perf import {modules}\n"
        "heavy = ('jax', 'torch', 'tensorflow', 'gin', 'tasks')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = _run_probe(probe)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_jax_worker_imports_no_seqio_tensorflow_gin_or_clu():
    # The GPU machine's image has jax, flax, optax and torch but none of these: the JAX worker
    # and everything it imports to build and time the trainer's step must do without them.
    modules = (
        "prompt_tuning.perf.workers, prompt_tuning.perf.benchmark, prompt_tuning.train.builder, "
        "prompt_tuning.prompts, prompt_tuning.t5, prompt_tuning.parallel.partitioning, "
        "prompt_tuning.perf.costs, prompt_tuning.perf.profiling, prompt_tuning.perf.matmul"
    )
    probe = (
        f"import sys\nimport {modules}\n"
        "absent = ('seqio', 'tensorflow', 'gin', 'clu', 'tensorflow_datasets')\n"
        "print(sorted(m for m in absent if m in sys.modules), 'jax' in sys.modules)"
    )
    done = _run_probe(probe)
    assert done.stdout.strip() == "[] True", done.stdout  # jax: the probe really built the path


def test_a_worker_past_its_timeout_is_killed_and_reported_with_its_stages_and_stacks():
    # T5 1.1 small takes well over 10 s to build and compile here: the worker is still busy when
    # its stacks are due (0.8 x 10 s) and when it is killed.
    settings = train_benchmark.BenchmarkSettings(dtypes=("float32",))
    spec = train_benchmark.specs(settings, "small", 8)[0][1]
    with pytest.raises(RuntimeError) as raised:
        train_benchmark.spawn("jax", spec, "", timeout=10)
    message = str(raised.value)
    # Killed at its timeout; or, seen once in ten runs, the worker crashed (SIGSEGV) while
    # faulthandler walked the other threads' frames: then its exit code is named.
    assert "ran past its 10 s (--timeout)" in message or "failed (exit -11)" in message
    progress = message.split("Its progress:")[1].split("Its stderr ends")[0]
    assert "jax worker started" in progress  # `benchmark.stage` lines, gathered
    # faulthandler's dump (every thread's Python stack), of which the message keeps the tail.
    assert "(most recent call first)" in message and "File " in message
