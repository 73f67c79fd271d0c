"""The prompt server over real HTTP on 127.0.0.1: equal to pt-infer, no compiles, bad input.

One server (the embedded tiny pretrained T5, two prompts of different lengths) serves the whole
module; the references are `inference.infer` (what `pt-infer` runs) on the same prompt files and
the same task examples.
"""

import concurrent.futures
import io
import threading

import numpy as np
import pytest

import tasks
from prompt_tuning import pretrained
from prompt_tuning.predict import inference
from prompt_tuning.prompts import Prompt
from prompt_tuning.serve import engine, loading, server, service
from prompt_tuning.t5.network import EncoderDecoder
from tasks import vocabularies
from tests.serve_fixtures import call, reference_texts

LENGTHS = {"inputs": 32, "targets": 8}
PROMPT_LENGTHS = {"builtin_sentiment": 4, "builtin_topic": 9}
NUM_EXAMPLES = 6
CONFIG = service.ServiceConfig(
    buckets=engine.Buckets((8,), (32,), (8,), (8,)),
    bank_capacity=4,
    policy="mixed",
    max_wait_s=0.3,  # long enough for a burst of concurrent requests to share a batch
    max_queue_rows=24,
    beam_sizes=(4,),
    limits=service.Limits(max_inputs=8),
)


def _infer(tmp, task, prompt_file, **options):
    model = EncoderDecoder(pretrained.tiny_t5_config(), prompt=Prompt(PROMPT_LENGTHS[task]))
    path = tmp / f"{task}_{len(list(tmp.iterdir()))}.jsonl"
    inference.infer(
        model,
        task,
        LENGTHS,
        str(path),
        batch_size=8,
        initial_checkpoint_path=pretrained.tiny_t5_checkpoint(),
        prompt_file=str(prompt_file),
        num_examples=NUM_EXAMPLES,
        **options,
    )
    return inference.read_jsonl(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompts")
    rng = np.random.default_rng(0)
    for task, length in PROMPT_LENGTHS.items():
        np.save(folder / f"{task}.npy", rng.uniform(-0.5, 0.5, (length, 128)).astype(np.float32))
    (folder / "idpg_run").mkdir()
    (folder / "idpg_run" / "config.gin").write_text("PROMPT = @prompts.InstancePrompt()\n")
    (folder / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    out = tmp_path_factory.mktemp("infer")
    refs = {
        task: _infer(out, task, folder / f"{task}.npy", decode_method="greedy")
        for task in PROMPT_LENGTHS
    }
    refs["beam"] = _infer(
        out, "builtin_sentiment", folder / "builtin_sentiment.npy", decode_method="beam"
    )
    refs["rank"] = _infer(
        out,
        "builtin_sentiment",
        folder / "builtin_sentiment.npy",
        rank_classification=True,
        score="prediction",
    )
    svc = server.build_service(
        EncoderDecoder(pretrained.tiny_t5_config()),
        vocabularies.tiny_vocabulary(),
        CONFIG,
        pretrained.tiny_t5_checkpoint(),
        str(folder),
        label_lookup=tasks.label_strings,
    )
    refs["prompts"] = {task: np.load(folder / f"{task}.npy") for task in PROMPT_LENGTHS}
    assert svc.wait_ready(600), svc.readiness()
    running = server.BackgroundServer(svc)
    yield running, svc, refs
    running.stop()


def _concurrently(url, requests):
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(call, url, "POST", path, body) for path, body in requests]
        return [f.result() for f in futures]


def test_outputs_equal_pt_infer_with_both_prompts_in_one_batch(setup):
    running, _, refs = setup
    requests = [
        ("/v1/generate", {"prompt": task, "inputs": r["inputs"], "max_length": 8, "truncate": True})
        for task in PROMPT_LENGTHS
        for r in refs[task]
    ]
    answers = _concurrently(running.url, requests)
    expected = [r["prediction"] for task in PROMPT_LENGTHS for r in refs[task]]
    assert [status for status, _, _ in answers] == [200] * len(requests)
    assert [a["outputs"][0]["text"] for _, a, _ in answers] == expected
    # Requests for the two prompts (4 and 9 positions) were served in shared batches.
    assert max(a["outputs"][0]["batch"]["prompts"] for _, a, _ in answers) == 2


def test_beam_and_rank_classification_equal_pt_infer(setup):
    running, _, refs = setup
    inputs = [r["inputs"] for r in refs["beam"]]
    beam_body = {"prompt": "builtin_sentiment", "inputs": inputs, "method": "beam", "max_length": 8}
    classify_body = {"prompt": "builtin_sentiment", "inputs": inputs}  # the task's labels
    (s1, beam, _), (s2, ranked, _) = _concurrently(
        running.url, [("/v1/generate", beam_body), ("/v1/classify", classify_body)]
    )
    assert (s1, s2) == (200, 200)
    assert [o["text"] for o in beam["outputs"]] == [r["prediction"] for r in refs["beam"]]
    assert ranked["labels"] == list(tasks.label_strings("builtin_sentiment"))
    assert [o["label"] for o in ranked["outputs"]] == [r["prediction"] for r in refs["rank"]]
    best = [max(o["scores"]) for o in ranked["outputs"]]
    np.testing.assert_allclose(best, [r["score"] for r in refs["rank"]], rtol=1e-4, atol=1e-4)


def _compile_counts(url):
    _, health, _ = call(url, "GET", "/healthz")
    _, metrics, _ = call(url, "GET", "/metrics")
    line = next(x for x in metrics.splitlines() if x.startswith("pt_serve_xla_compiles_total "))
    assert float(line.split()[1]) == health["xla_compiles"]
    return health["compiles"], health["xla_compiles"], health["programs"]


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _reference(svc, prompt, texts, max_length):
    """The plain-prompt model's greedy outputs (tests/serve_fixtures.py)."""
    length = CONFIG.buckets.input_length[-1]
    return reference_texts(svc.engine.params, prompt, svc.vocabulary, texts, max_length, length)


def test_no_compilation_after_warm_up_even_when_prompts_change(setup):
    running, svc, _ = setup
    url, texts = running.url, ["the movie was great", "a dull , long film", "cats"]
    new = np.random.default_rng(3).normal(size=(5, 128)).astype(np.float32)
    cases = [((texts * 3)[:n], max_length) for n, max_length in ((1, 1), (3, 8), (8, 5))]
    # The references compile in this process: before counting the server's compilations.
    expected = [_reference(svc, 2 * new, inputs, m) for inputs, m in cases]  # the replaced value
    before = _compile_counts(running.url)
    assert before[0] == {"warmup": 3}  # greedy, beam, score at the one bucket
    assert call(url, "PUT", "/v1/prompts/fresh", _npy(new))[0] == 201
    assert call(url, "PUT", "/v1/prompts/fresh", {"prompt": (2 * new).tolist()})[0] == 200
    for (inputs, max_length), texts_expected in zip(cases, expected):
        body = {"prompt": "fresh", "inputs": inputs, "max_length": max_length}
        status, answer, _ = call(url, "POST", "/v1/generate", body)
        assert status == 200 and [o["text"] for o in answer["outputs"]] == texts_expected
    body = {"prompt": "fresh", "inputs": texts, "method": "beam", "max_length": 3}
    assert call(url, "POST", "/v1/generate", body)[0] == 200
    body = {"prompt": "fresh", "inputs": texts, "labels": ["yes", "no", "maybe"]}
    assert call(url, "POST", "/v1/classify", body)[0] == 200
    assert call(url, "DELETE", "/v1/prompts/fresh")[0] == 200
    assert _compile_counts(url) == before


def test_bad_input_gets_clear_errors_and_the_server_keeps_serving(setup):
    running, svc, refs = setup
    url, good = running.url, {"prompt": "builtin_topic", "inputs": "news about the game"}
    status, answer, _ = call(url, "POST", "/v1/generate", {**good, "prompt": "nope"})
    assert status == 404 and answer["known"] == ["builtin_sentiment", "builtin_topic"]
    status, answer, _ = call(url, "POST", "/v1/generate", {**good, "prompt": "idpg_run"})
    assert status == 404 and "instance-dependent" in answer["error"]
    _, before, _ = call(url, "GET", "/v1/prompts")
    # A failed replacement keeps the served value (checked by the truncated request below).
    upload = _npy(np.ones((40, 128), np.float32) * np.nan)
    status, answer, _ = call(url, "PUT", "/v1/prompts/builtin_topic", upload)
    assert status == 400 and "NaN" in answer["error"]
    status, answer, _ = call(url, "PUT", "/v1/prompts/x", _npy(np.ones((4, 64), np.float32)))
    assert status == 400 and "[4, 64]" in answer["error"] and "[p, 128]" in answer["error"]
    status, answer, _ = call(url, "PUT", "/v1/prompts/x", _npy(np.ones((4, 128), np.int32)))
    assert status == 400 and "dtype int32" in answer["error"]
    status, answer, _ = call(url, "PUT", "/v1/prompts/x", b"not a numpy file")
    assert status == 400 and "not a readable .npy" in answer["error"]
    status, answer, _ = call(url, "PUT", "/v1/prompts/bad%20name", _npy(np.ones((4, 128))))
    assert status == 400 and "not allowed" in answer["error"]
    _, after, _ = call(url, "GET", "/v1/prompts")  # failed uploads changed nothing
    assert (after["prompts"], after["bank"]) == (before["prompts"], before["bank"])
    assert _compile_counts(url)[0] == {"warmup": 3}  # a 40-row prompt did not grow the bank
    status, answer, _ = call(url, "POST", "/v1/generate", '{"prompt": "builtin_topic",',
                             {"Content-Type": "application/json"})  # fmt: skip
    assert status == 400 and answer["error"].startswith("Malformed JSON")
    status, answer, _ = call(url, "POST", "/v1/generate", {"inputs": "x", "colour": 1})
    assert status == 400 and "prompt: Field required" in answer["error"]
    assert "colour: Extra inputs" in answer["error"]
    long_text = " ".join(["word"] * 100)
    status, answer, _ = call(url, "POST", "/v1/generate", {**good, "inputs": long_text})
    assert status == 400 and "truncate" in answer["error"]
    status, _, _ = call(
        url, "POST", "/v1/generate", {**good, "inputs": long_text, "truncate": True}
    )
    assert status == 200
    status, answer, _ = call(url, "POST", "/v1/generate", {**good, "inputs": ["a"] * 9})
    assert status == 400 and "1 to 8 inputs" in answer["error"]
    status, answer, _ = call(url, "POST", "/v1/generate", {**good, "max_length": 9})
    assert status == 400 and "DECODE_LENGTH_BUCKETS" in answer["error"]
    status, answer, _ = call(
        url, "POST", "/v1/generate", {**good, "method": "beam", "beam_size": 3}
    )
    assert status == 400 and "BEAM_SIZES" in answer["error"]
    status, answer, _ = call(url, "POST", "/v1/classify", {**good, "labels": ["a", "a"]})
    assert status == 400 and "distinct" in answer["error"]
    status, answer, _ = call(url, "POST", "/v1/classify", {"prompt": "builtin_topic", "inputs": "x",
                             "labels": None})  # fmt: skip
    assert status == 200  # the task's labels
    assert call(url, "GET", "/healthz")[1]["status"] == "ok"
    status, answer, _ = call(
        url,
        "POST",
        "/v1/generate",
        {**good, "inputs": long_text, "max_length": 8, "truncate": True},
    )
    topic = refs["prompts"]["builtin_topic"]
    assert status == 200  # the first 31 tokens and EOS, as seqio's append_eos_after_trim
    assert answer["outputs"][0]["text"] == _reference(svc, topic, [long_text], 8)[0]
    _, prompts, _ = call(url, "GET", "/v1/prompts")
    assert {p["name"] for p in prompts["not_served"]} == {"corrupt", "idpg_run"}


def test_a_full_queue_answers_429_while_other_requests_are_served(setup):
    running, svc, _ = setup
    gate, entered, original = threading.Event(), threading.Event(), svc.batcher._run_batch

    def gated(items):
        entered.set()
        return gate.wait(60) and original(items)

    svc.batcher._run_batch = gated
    body = {"prompt": "builtin_sentiment", "inputs": ["good"] * 8}
    try:
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            first = pool.submit(call, running.url, "POST", "/v1/generate", body)
            assert entered.wait(60)  # the worker holds the first 8 rows at the gate
            rest = [pool.submit(call, running.url, "POST", "/v1/generate", body) for _ in range(4)]
            # One of the four is refused once the other three (24 rows) fill the queue.
            done, _ = concurrent.futures.wait(rest, 60, concurrent.futures.FIRST_COMPLETED)
            assert [f.result()[0] for f in done] == [429]
            health = call(running.url, "GET", "/healthz")[1]  # served while the model is busy
            assert health["queue_rows"] == 24
            gate.set()
            answers = [first.result()] + [f.result() for f in rest]
    finally:
        gate.set()
        svc.batcher._run_batch = original
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 200, 200, 200, 429]
    refused = next(a for a in answers if a[0] == 429)
    assert "MAX_QUEUE_ROWS" in refused[1]["error"] and refused[2]["retry-after"] == "1"


def test_a_failing_batch_fails_its_requests_only(setup):
    running, svc, _ = setup
    original = svc.engine.generate

    def broken(*args, **kwargs):
        svc.engine.generate = original  # only this batch fails
        raise RuntimeError("simulated device failure")

    svc.engine.generate = broken
    body = {"prompt": "builtin_topic", "inputs": "a match"}
    status, answer, _ = call(running.url, "POST", "/v1/generate", body)
    assert status == 500 and "simulated device failure" in answer["error"]
    assert call(running.url, "POST", "/v1/generate", body)[0] == 200


def test_openapi_page_and_metrics(setup):
    running, _, _ = setup
    status, schema, _ = call(running.url, "GET", "/openapi.json")
    assert status == 200 and {"/v1/generate", "/v1/classify", "/v1/prompts/{name}"} <= set(
        schema["paths"]
    )
    assert call(running.url, "GET", "/docs")[0] == 200
    _, metrics, _ = call(running.url, "GET", "/metrics")
    for name in ("pt_serve_requests_total", "pt_serve_batch_rows_bucket",
                 "pt_serve_queue_seconds_sum", "pt_serve_compute_seconds_count",
                 'pt_serve_compiles_total{reason="warmup"} 3.0'):  # fmt: skip
        assert name in metrics
    assert loading.NAME_PATTERN.match("builtin_sentiment")
