"""Helpers of the serve tests: a stdlib HTTP client for the server on 127.0.0.1, and the reference
prediction of a prompt (the plain `Prompt` model and `decoding.greedy_decode`, as trained and as
`pt-infer` runs it; no serving code)."""

import http.client
import json

import jax
import numpy as np

from prompt_tuning import pretrained
from prompt_tuning.prompts import Prompt
from prompt_tuning.t5 import decoding
from prompt_tuning.t5.network import EncoderDecoder

_greedy = jax.jit(decoding.greedy_decode, static_argnums=(0, 3))


def call(url, method, path, body=None, headers=None):
    """One HTTP request; returns (status, parsed JSON or text, headers)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    if isinstance(body, dict):
        body, headers = json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    kind = response.getheader("Content-Type", "")
    value = json.loads(data) if kind.startswith("application/json") else data.decode()
    return response.status, value, dict(response.getheaders())


def reference_texts(frozen, prompt, vocabulary, texts, max_length, input_length):
    """Greedy outputs of the embedded tiny T5 with `prompt` [P, H] on `texts`.

    Each text is tokenized with EOS appended; a text longer than `input_length` tokens keeps its
    first `input_length - 1` tokens and EOS (seqio's `append_eos_after_trim`).
    """
    tokens = np.zeros((len(texts), input_length), np.int32)  # [n, T]
    for i, text in enumerate(texts):
        ids = list(vocabulary.encode(text))[: input_length - 1] + [vocabulary.eos_id]
        tokens[i, : len(ids)] = ids
    model = EncoderDecoder(pretrained.tiny_t5_config(), prompt=Prompt(len(prompt)))
    params = dict(frozen, encoder=dict(frozen["encoder"], prompt={"prompt": np.asarray(prompt)}))
    out = np.asarray(_greedy(model, params, tokens, max_length))  # [n, S]
    return [vocabulary.decode([int(t) for t in row]) for row in out]
