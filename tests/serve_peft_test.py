"""PEFT prompt-tuning adapters in the server: PROMPT_DIR subfolders and zipped uploads.

The reference is PEFT itself: adapters saved by `PeftModel.save_pretrained` must be served as
their `prompt_embeddings`, and adapters PEFT means differently (a decoder prompt too) refused.
"""

import io
import pathlib
import zipfile

import numpy as np
import pytest

pytest.importorskip("peft", reason="the PEFT reference: `pip install peft` (test extra)")
pytest.importorskip("fastapi", reason="pt-serve needs the serve extra")

from prompt_tuning import pretrained  # noqa: E402
from prompt_tuning.serve import engine, loading, server, service  # noqa: E402
from prompt_tuning.t5.network import EncoderDecoder  # noqa: E402
from tasks import vocabularies  # noqa: E402
from tests.export_peft_test import _peft_saved  # noqa: E402
from tests.serve_fixtures import call  # noqa: E402

WIDTH = 128  # the tiny T5's


def _zip(folder: pathlib.Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in folder.iterdir():
            archive.write(path, f"{folder.name}/{path.name}")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A PROMPT_DIR with an encoder-prompt adapter and a decoder-prompt one (PEFT saved both)."""
    root = tmp_path_factory.mktemp("adapters")
    good, weight = _peft_saved(root / "a", WIDTH, length=4)
    bad, _ = _peft_saved(root / "b", WIDTH, submodules=2, length=4)
    prompt_dir = root / "prompt_dir"
    prompt_dir.mkdir()
    good.rename(prompt_dir / "rte")
    bad.rename(prompt_dir / "decoder")
    return prompt_dir, weight


def test_scan_prompt_dir_serves_adapter_folders(adapters):
    prompt_dir, weight = adapters
    found = {f.name: f for f in loading.scan_prompt_dir(prompt_dir)}
    np.testing.assert_array_equal(found["rte"].prompt, weight)
    assert found["decoder"].prompt is None
    assert "num_transformer_submodules is 2" in found["decoder"].reason


def test_upload_a_zipped_adapter_and_refuse_a_bad_one_changing_nothing(adapters):
    prompt_dir, weight = adapters
    config = service.ServiceConfig(
        buckets=engine.Buckets((1,), (8,), (4,), (1,)), bank_capacity=4, warmup=()
    )
    svc = server.build_service(
        EncoderDecoder(pretrained.tiny_t5_config()),
        vocabularies.tiny_vocabulary(),
        config,
        pretrained.tiny_t5_checkpoint(),
        str(prompt_dir),
    )
    running = server.BackgroundServer(svc)
    try:
        zipped = {"Content-Type": "application/zip"}
        status, answer, _ = call(
            running.url, "PUT", "/v1/prompts/up", _zip(prompt_dir / "rte"), zipped
        )
        assert status == 201 and answer["length"] == 4, answer
        snapshot = svc.registry.snapshot()
        rows = np.asarray(snapshot.table)
        np.testing.assert_array_equal(rows[snapshot.slots["up"], -4:], weight)
        np.testing.assert_array_equal(rows[snapshot.slots["rte"], -4:], weight)
        before = (svc.registry.names(), snapshot.version)
        status, answer, _ = call(
            running.url, "PUT", "/v1/prompts/up", _zip(prompt_dir / "decoder"), zipped
        )
        assert status == 400 and "num_transformer_submodules is 2" in answer["error"]
        status, answer, _ = call(running.url, "PUT", "/v1/prompts/up", b"not a zip", zipped)
        assert status == 400 and "not a zip archive" in answer["error"]
        assert (svc.registry.names(), svc.registry.snapshot().version) == before
        np.testing.assert_array_equal(
            np.asarray(svc.registry.snapshot().table)[snapshot.slots["up"], -4:], weight
        )
    finally:
        running.stop()
