"""Liveness and readiness of the prompt server: live before its programs compile, requests served
during the warm-up, ready once all are compiled; the persistent compilation cache's folder.

The warm-up's compilations are held at an event (no sleeps): the server must answer /healthz,
report its progress on /readyz and serve a request whose program a request-side compile makes,
all while the warm-up is blocked.
"""

import pathlib
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import pretrained
from prompt_tuning.serve import engine, server, service
from prompt_tuning.t5.network import EncoderDecoder
from tasks import vocabularies
from tests.serve_fixtures import call, reference_texts

CONFIG = service.ServiceConfig(
    buckets=engine.Buckets((1, 4), (16,), (8,), (4,)),
    bank_capacity=2,
    max_wait_s=0.0,
    warmup=("greedy",),
    compile_threads=1,  # the warm-up compiles B=1, then B=4
)
PROMPT = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 128)).astype(np.float32)
TEXTS = ["a great film", "dull and long", "the team won"]


def test_live_at_once_ready_after_warm_up_and_serving_meanwhile(tmp_path, monkeypatch):
    np.save(tmp_path / "task.npy", PROMPT)
    release, entered, lower = threading.Event(), threading.Event(), engine.Engine._lower

    def held(self, key):  # the warm-up's threads wait for `release`; a request's thread does not
        if threading.current_thread().name.startswith("pt-serve-warmup"):
            entered.set()
            assert release.wait(120)
        return lower(self, key)

    monkeypatch.setattr(engine.Engine, "_lower", held)
    svc = server.build_service(
        EncoderDecoder(pretrained.tiny_t5_config()),
        vocabularies.tiny_vocabulary(),
        CONFIG,
        pretrained.tiny_t5_checkpoint(),
        str(tmp_path),
        start_warm_up=False,  # the app starts it when the listener comes up, as pt-serve does
    )
    running = server.BackgroundServer(svc)
    try:
        assert entered.wait(120)  # the warm-up holds "greedy B=1"
        status, health, _ = call(running.url, "GET", "/healthz")
        assert status == 200 and health["status"] == "ok" and health["ready"] is False
        status, progress, _ = call(running.url, "GET", "/readyz")
        assert status == 503 and (progress["compiled"], progress["total"]) == (0, 2)
        assert progress["programs"] == {
            "compiled": [],
            "compiling": ["greedy B=1 T=16 S=8"],
            "pending": ["greedy B=4 T=16 S=8"],
        }
        # Three inputs need B=4, not reached by the warm-up: compiled for the request at once.
        body = {"prompt": "task", "inputs": TEXTS, "max_length": 8}
        status, answer, _ = call(running.url, "POST", "/v1/generate", body)
        expected = reference_texts(svc.engine.params, PROMPT, svc.vocabulary, TEXTS, 8, 16)
        assert status == 200 and [o["text"] for o in answer["outputs"]] == expected
        status, progress, _ = call(running.url, "GET", "/readyz")
        assert status == 503 and progress["programs"]["compiled"] == ["greedy B=4 T=16 S=8"]
        release.set()
        assert svc.wait_ready(120)
        status, progress, _ = call(running.url, "GET", "/readyz")
        assert (
            status == 200
            and progress["ready"]
            and (progress["compiled"], progress["total"]) == (2, 2)
        )
        assert progress["error"] is None and progress["programs"]["pending"] == []
        assert svc.engine.compiles == {"warmup": 2}  # the request's compile counts as warm-up
        assert call(running.url, "GET", "/healthz")[1]["ready"] is True
    finally:
        release.set()
        running.stop()


def test_a_failed_compilation_is_reported_and_never_ready(tmp_path, monkeypatch):
    def broken(self, key):
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr(engine.Engine, "_lower", broken)
    params = {"unused": jnp.zeros(1)}  # nothing compiles
    svc = service.Service(EncoderDecoder(pretrained.tiny_t5_config()), params, None, CONFIG)
    try:
        assert not svc.wait_ready(60)
        progress = svc.readiness()
        assert progress["ready"] is False and progress["compiled"] == 0
        assert progress["error"].startswith("greedy B=1 T=16 S=8: RuntimeError: simulated")
    finally:
        svc.close()


def test_compilation_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert server.default_cache_dir() == tmp_path / "xdg" / "prompt_tuning" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert server.default_cache_dir() == tmp_path / "home" / ".cache" / "prompt_tuning" / "jax"
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=r"file/jax.*COMPILATION_CACHE_DIR"):
        server.enable_compilation_cache(pathlib.Path(blocker, "jax"))
