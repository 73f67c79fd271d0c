"""Tests of prompt_tuning.train.host_memory: training steps stop faulting in fresh pages.

The check is the kernel's own count of minor page faults (`getrusage`), taken by the benchmark's
worker around each step of a T5 (tiny, batch 8, 236 tokens: XLA:CPU's temporary buffer is ~45 MiB
per step, allocated on a worker thread). With glibc's defaults every step maps that buffer afresh
and faults in each of its pages; with `reuse_freed_memory` steps reuse the freed pages. Each
setting runs in its own interpreter, because malloc's settings are per process and must be made
before JAX starts its threads.
"""

import os
import statistics
import subprocess
import sys

import pytest

from prompt_tuning.train import host_memory
from tools import benchmark_train

GLIBC = host_memory._glibc() is not None
SPEC = dict(
    size="tiny",
    batch=8,
    dtype="float32",
    frozen_dtype="float32",
    remat_layers="none",
    dropout=0.1,
    prompt_length=20,
    input_length=216,
    target_length=8,
    seed=0,
    trainable_regex="prompt",
    donate=True,
    warmup=3,
    steps=8,
    profile=False,
    prng_impl=None,
)


def _faults(host_malloc: str) -> list[int]:
    run = benchmark_train._spawn("jax", dict(SPEC, host_malloc=host_malloc), "", timeout=300)
    assert all(loss == loss for loss in run["losses"])  # finite: the steps really ran
    return run["minor_faults"]


@pytest.mark.skipif(not GLIBC, reason="mallopt/malloc_trim are glibc's (this is not glibc)")
def test_steps_reuse_their_buffers_instead_of_faulting_in_fresh_pages():
    system, reuse = _faults("system"), _faults("reuse")
    # glibc's defaults: every step faults in at least its ~45 MiB temporary buffer afresh.
    assert statistics.median(system) > 5000, system
    # Reused: the typical step touches no fresh page (an occasional step may, when a small
    # allocation splits the freed buffer), and in all far fewer than with the defaults.
    assert statistics.median(reuse) < 0.05 * statistics.median(system), (reuse, system)
    assert sum(reuse) < 0.5 * sum(system), (reuse, system)


@pytest.mark.skipif(not GLIBC, reason="mallopt/malloc_trim are glibc's (this is not glibc)")
def test_settings_apply_in_a_fresh_process_and_the_switch_is_honoured():
    code = (
        "from prompt_tuning.train import host_memory as h; "
        "print(h.reuse_freed_memory(), h.release_free_memory() in (True, False))"
    )
    outputs = {}
    for choice in ("reuse", "system"):
        env = dict(os.environ, **{host_memory.ENV_VAR: choice})
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs[choice] = done.stdout.split()
    assert outputs == {"reuse": ["True", "True"], "system": ["False", "True"]}


def test_an_unknown_setting_is_named_with_the_choices(monkeypatch):
    monkeypatch.setenv(host_memory.ENV_VAR, "jemalloc")
    with pytest.raises(ValueError, match=r"PROMPT_TUNING_HOST_MALLOC='jemalloc'.*reuse, system"):
        host_memory.reuse_freed_memory()
