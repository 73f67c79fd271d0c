"""Compiled serving programs over the frozen T5 and a `RaggedPromptBank`, in fixed shape buckets.

Every batch is padded to a batch bucket B, an input-length bucket T and a decode (or label) length
bucket S, so a server compiles a fixed set of programs at start (warm-up) and none after. The
programs are the library predictor's (`predict.predictor.Predictor.compile`, one predictor per
bank shape), compiled ahead of time against the shardings the frozen parameters carry
(`predictor.batch_sharding`: the batch is split over the mesh's "data" axis when B divides by it;
the parameters stay as placed by `inference.load_params`; the bank is replicated). This module
keeps the table of compiled buckets: each compile is counted and logged; a request never compiles
unless its shape is outside the warmed set, or the warm-up (in the background, smallest buckets
first: `plan_warm_up`) has not reached it yet.

Programs (all outputs per row, equal to running the row alone with its prompt):
- greedy: `decoding.greedy_decode` with each row's own maximum length (`decode_lengths`: the loop
  stops once every row has its EOS or its length, so one decode bucket S serves short requests
  without decoding past them; greedy decoding of a shorter length is a prefix of a longer one);
- beam: `decoding.beam_search` with each row's own maximum length, best beam and score;
- score: the summed log-likelihood of each input's label rows (rank classification): B inputs,
  each encoded once, and L label rows per input (`decoding.score`, as evaluation's
  `Predictor.label_scores`); the decoder inputs are the targets shifted right on the host
  (`rank_classification.shift_right`). Inputs are grouped by their label-count bucket L; an
  input with more labels than the largest L is scored in pieces of that many labels.

Letters: B batch, T input length, S decode/label length, C bank capacity, P bank prompt length,
H model dim, W beams, L labels per input.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.predict import predictor as predictor_lib
from prompt_tuning.predict import rank_classification as ranking
from prompt_tuning.prompts.ragged_bank import RaggedPromptBank
from prompt_tuning.serve.warmup import WarmUp
from prompt_tuning.train.model import PromptModel

KINDS = predictor_lib.KINDS


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The padded shapes a server compiles for (each tuple ascending).

    Attributes:
      batch: batch sizes B (rows; a beam row holds W beams).
      input_length: encoder input lengths T (the largest is the longest input served).
      decode_length: decode lengths S of `generate` (the largest is the longest output).
      label_length: label lengths S of `classify` (the largest is the longest label).
      label_count: labels per input L of the score programs: an input's labels go to the
        smallest L that holds them, or in pieces of the largest L (each piece encodes the input
        once). A score program holds B inputs and B*L label rows, B = a batch bucket's rows
        shared out over L (`score_inputs`).
    """

    batch: tuple[int, ...] = (1, 32)
    input_length: tuple[int, ...] = (64, 256)
    decode_length: tuple[int, ...] = (64,)
    label_length: tuple[int, ...] = (8,)
    label_count: tuple[int, ...] = (4,)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            values = tuple(int(v) for v in getattr(self, field.name))
            if not values or min(values) < 1 or list(values) != sorted(set(values)):
                raise ValueError(
                    f"Bucket list {field.name}={values} must be positive, ascending, distinct."
                )
            object.__setattr__(self, field.name, values)

    def lengths(self, kind: str) -> tuple[int, ...]:
        """The target-length buckets of a program kind."""
        return self.label_length if kind == "score" else self.decode_length

    def score_inputs(self, labels: int) -> tuple[int, ...]:
        """The input batch sizes B of score programs with L = `labels` rows per input: each
        batch bucket's rows over L, at least one input (so B*L rows <= max(rows, L))."""
        return tuple(sorted({max(1, rows // labels) for rows in self.batch}))


def bucket(values: Sequence[int], n: int) -> int:
    """The smallest bucket >= n.

    Raises:
      ValueError: n is larger than every bucket.
    """
    for value in values:
        if value >= n:
            return value
    raise ValueError(f"{n} exceeds the largest bucket {values[-1]}.")


@dataclasses.dataclass(frozen=True)
class ProgramKey:
    """One compiled program: its kind and padded shapes.

    Attributes:
      kind: "greedy", "beam" or "score".
      batch: input rows B.
      input_length: T.
      target_length: decode length or label length S.
      width: rows per input: beams W ("beam"), labels L ("score"), 0 for greedy.
      capacity: bank rows C.
      prompt_length: bank prompt length P.
    """

    kind: str
    batch: int
    input_length: int
    target_length: int
    width: int
    capacity: int
    prompt_length: int

    def label(self) -> str:
        """A short name for progress reports, e.g. "beam B=4 T=64 S=64 W=4"."""
        name = f"{self.kind} B={self.batch} T={self.input_length} S={self.target_length}"
        letter = {"beam": "W", "score": "L"}.get(self.kind)
        return name + (f" {letter}={self.width}" if letter else "")

    def order(self) -> tuple[int, ...]:
        """Compilation order: smaller buckets first (batch, then input length, then kind)."""
        kind = KINDS.index(self.kind) if self.kind in KINDS else len(KINDS)
        return (self.batch, self.input_length, kind, self.target_length, self.width)


def _with_bank(params: Any, table: Any, lengths: Any) -> dict:
    """The frozen params with the bank at `encoder/prompt/{prompt, lengths}`."""
    encoder = dict(params["encoder"], prompt={"prompt": table, "lengths": lengths})
    return dict(params, encoder=encoder)


class Engine:
    """Runs padded batches through compiled programs; compiles each shape once.

    Attributes:
      module: the frozen `EncoderDecoder` (its own prompt, if any, is replaced by the bank).
      params: its parameters (frozen, placed on a mesh by `inference.load_params`).
      buckets: the padded shapes.
      beam_sizes: the beam sizes served.
      compiles: programs compiled so far, by reason ("warmup", "new_shape", "bank_resize"); a
        program of a warm-up set compiled early for a request counts as that warm-up's.
      compile_threads: programs compiled at once by `warm_up` (default: the CPU count).
    """

    def __init__(
        self,
        module: Any,
        params: Any,
        buckets: Buckets,
        beam_sizes: Sequence[int] = (4,),
        on_compile: Callable[[ProgramKey, str, float], None] | None = None,
        compile_threads: int | None = None,
    ):
        self.compile_threads = compile_threads or os.cpu_count() or 1
        self.module = module.clone(prompt=None)
        self.params = params
        self.buckets = buckets
        self.beam_sizes = tuple(int(w) for w in beam_sizes)
        self.embed_dim = int(module.config.emb_dim)
        self.compiles: dict[str, int] = {}
        self._on_compile = on_compile
        self._programs: dict[ProgramKey, Any] = {}
        self._predictors: dict[tuple[int, int], predictor_lib.Predictor] = {}
        self._pending: dict[ProgramKey, threading.Lock] = {}
        self._planned: dict[ProgramKey, str] = {}  # warm-up keys -> their reason
        self._lock = threading.Lock()

    # Shardings (the predictor's, from the params' mesh) ------------------------------------------
    def replicated(self) -> jax.sharding.Sharding:
        """Where the bank lives: replicated on the params' mesh (or their single device)."""
        return predictor_lib.replicated_sharding(self.params)

    def batch_sharding(self, rows: int) -> jax.sharding.Sharding:
        """Batch arrays: split over "data" when it divides `rows`, else replicated."""
        return predictor_lib.batch_sharding(self.params, rows)

    # Programs ------------------------------------------------------------------------------------
    def bank_predictor(self, capacity: int, length: int) -> predictor_lib.Predictor:
        """The predictor of the frozen model with a `RaggedPromptBank(capacity, length)` (one
        object per shape, so its programs are compiled once)."""
        with self._lock:
            key = (capacity, length)
            if key not in self._predictors:
                bank = RaggedPromptBank(capacity, length, self.embed_dim)
                model = PromptModel(self.module.clone(prompt=bank))
                self._predictors[key] = predictor_lib.Predictor(model)
            return self._predictors[key]

    def _lower(self, key: ProgramKey) -> Any:
        """Compiles one program for its shapes and shardings (`Predictor.compile`)."""
        b, t, s = key.batch, key.input_length, key.target_length
        rep, data = self.replicated(), self.batch_sharding(b)
        spec = lambda shape, sh=data: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sh)  # noqa: E731
        params = _with_bank(
            self.params,
            jax.ShapeDtypeStruct(
                (key.capacity, key.prompt_length, self.embed_dim), jnp.float32, sharding=rep
            ),
            spec((key.capacity,), rep),
        )
        batch = {"encoder_input_tokens": spec((b, t)), "task_ids": spec((b,))}
        if key.kind == "score":  # B inputs, B*L label rows
            targets = spec((b * key.width, s), self.batch_sharding(b * key.width))
            batch["decoder_input_tokens"] = batch["decoder_target_tokens"] = targets
        else:
            batch["decode_lengths"] = spec((b,))
        model = self.bank_predictor(key.capacity, key.prompt_length)
        return model.compile(key.kind, params, batch, key.width, s)

    def program(self, key: ProgramKey, reason: str = "new_shape") -> Any:
        """The compiled program of `key`, compiling it (once, even from several threads).

        A request whose program a warm-up has not compiled yet compiles it here, ahead of the
        warm-up's order, and waits only for it; a program being compiled is waited for.
        """
        with self._lock:
            compiled = self._programs.get(key)
            if compiled is not None:
                return compiled
            reason = self._planned.get(key, reason)
            lock = self._pending.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._programs:
                    return self._programs[key]
            start = time.perf_counter()
            try:
                compiled = self._lower(key)
            except BaseException:
                with self._lock:
                    self._pending.pop(key, None)
                raise
            seconds = time.perf_counter() - start
            with self._lock:
                self._programs[key] = compiled
                self._pending.pop(key, None)
                self.compiles[reason] = self.compiles.get(reason, 0) + 1
            level = logging.DEBUG if key in self._planned else logging.WARNING
            logging.log(level, "Compiled %s (%s) in %.1f s", key, reason, seconds)
            if self._on_compile is not None:
                self._on_compile(key, reason, seconds)
            return compiled

    def state(self, key: ProgramKey) -> str:
        """The key's state: "compiled", "compiling" or "pending"."""
        with self._lock:
            if key in self._programs:
                return "compiled"
            return "compiling" if key in self._pending else "pending"

    def warm_keys(self, kinds: Sequence[str], capacity: int, length: int) -> list[ProgramKey]:
        """Every program of `kinds` for the bank shape (C, P), smallest buckets first."""
        keys = []
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"Unknown program kind {kind!r}; choose from {KINDS}.")
            widths = {"beam": self.beam_sizes, "score": self.buckets.label_count}.get(kind, (0,))
            for w in widths:
                batches = self.buckets.score_inputs(w) if kind == "score" else self.buckets.batch
                for b in batches:
                    for t in self.buckets.input_length:
                        for s in self.buckets.lengths(kind):
                            keys.append(ProgramKey(kind, b, t, s, w, capacity, length))
        return sorted(keys, key=ProgramKey.order)

    def plan_warm_up(
        self, kinds: Sequence[str], capacity: int, length: int, reason: str = "warmup"
    ) -> WarmUp:
        """A `WarmUp` (not started) of every program of `kinds` for the bank shape; from now on a
        request compiling one of them counts it under `reason`."""
        keys = self.warm_keys(kinds, capacity, length)
        with self._lock:
            for key in keys:
                self._planned.setdefault(key, reason)
        return WarmUp(
            keys,
            lambda key: self.program(key, reason),
            self.state,
            ProgramKey.label,
            self.compile_threads,
        )

    def warm_up(
        self, kinds: Sequence[str], capacity: int, length: int, reason: str = "warmup"
    ) -> int:
        """Compiles every program of `kinds` for the bank shape (blocking); returns how many were
        new.

        Raises:
          RuntimeError: a program failed to compile (naming it).
        """
        before = self.num_programs()
        warm = self.plan_warm_up(kinds, capacity, length, reason).start()
        if not warm.wait():
            raise RuntimeError(f"Compiling the serving programs failed: {warm.error}")
        return self.num_programs() - before

    def num_programs(self) -> int:
        """Programs compiled so far."""
        return len(self._programs)

    # Running -------------------------------------------------------------------------------------
    def _pad(self, tokens: Sequence[np.ndarray], rows: Sequence[int], extra=(), batches=None):
        """Pads n rows to the batch (or `batches`) and input-length buckets.

        Padding rows repeat row 0, so a decoding loop stops when the real rows are done.
        """
        n = len(tokens)
        b = bucket(batches or self.buckets.batch, n)
        t = bucket(self.buckets.input_length, max(len(x) for x in tokens))
        batch = np.zeros((b, t), np.int32)  # [B, T]
        for i, x in enumerate(tokens):
            batch[i, : len(x)] = x
        batch[n:] = batch[0]
        ids = np.asarray(list(rows) + [rows[0]] * (b - n), np.int32)  # [B]
        padded = [np.concatenate([e, np.repeat(e[:1], b - n, axis=0)]) for e in extra]
        return b, t, batch, ids, padded

    def _put(self, b: int, *arrays: np.ndarray) -> list[jax.Array]:
        sharding = self.batch_sharding(b)
        return [jax.device_put(a, sharding) for a in arrays]

    def generate(
        self,
        bank: Any,
        tokens: Sequence[np.ndarray],
        rows: Sequence[int],
        max_lengths: Sequence[int],
        method: str = "greedy",
        beam_size: int = 4,
    ) -> tuple[list[np.ndarray], list[float] | None]:
        """Decodes n inputs, each with its bank row and its maximum output length.

        Args:
          bank: a snapshot with `table [C, P, H]`, `lengths [C]` (device arrays).
          tokens: n int arrays `[t_i]` (EOS included), t_i <= the largest input bucket.
          rows: n bank rows.
          max_lengths: n maximum output lengths, each <= the largest decode bucket.
          method: "greedy" or "beam".
          beam_size: W for "beam" (one of `beam_sizes`).

        Returns:
          (n token arrays `[max_length_i]`, 0 after EOS; n beam scores or None for greedy).
        """
        s = bucket(self.buckets.decode_length, max(max_lengths))
        kind = "beam" if method == "beam" else "greedy"
        limits = np.asarray(max_lengths, np.int32)[:, None]  # [n, 1]
        b, t, batch, ids, (limits,) = self._pad(tokens, rows, (limits,))
        key = ProgramKey(kind, b, t, s, beam_size if kind == "beam" else 0, *bank.shape)
        program = self.program(key)
        args = self._put(b, batch, ids, limits[:, 0])
        features = dict(zip(("encoder_input_tokens", "task_ids", "decode_lengths"), args))
        out, scores = program(_with_bank(self.params, bank.table, bank.lengths), features)
        if scores is not None:
            scores = np.asarray(jax.device_get(scores))[: len(tokens)].tolist()
        out = np.asarray(jax.device_get(out))
        return [out[i, :m] for i, m in enumerate(max_lengths)], scores

    def score(
        self,
        bank: Any,
        tokens: Sequence[np.ndarray],
        rows: Sequence[int],
        targets: Sequence[Sequence[np.ndarray]],
    ) -> list[np.ndarray]:
        """Summed log-likelihoods of each input's targets, each input encoded once.

        Args:
          bank: a snapshot with `table [C, P, H]`, `lengths [C]` (device arrays).
          tokens: n int arrays `[t_i]` (EOS included).
          rows: n bank rows.
          targets: n sequences of l_i >= 1 label arrays `[s]` (EOS included).

        Returns:
          n float arrays `[l_i]`. Each input's labels are one piece (its label-count bucket L)
          or pieces of the largest L; pieces are grouped by L and run in chunks of at most
          `Buckets.score_inputs(L)[-1]` pieces, one program call each.
        """
        widest = self.buckets.label_count[-1]
        groups: dict[int, list[tuple[int, int]]] = {}  # L -> pieces (input, first label)
        for i, labels in enumerate(targets):
            for first in range(0, len(labels), widest):
                width = bucket(self.buckets.label_count, min(len(labels) - first, widest))
                groups.setdefault(width, []).append((i, first))
        out = [np.zeros(len(labels), np.float32) for labels in targets]
        for width, pieces in sorted(groups.items()):
            most = self.buckets.score_inputs(width)[-1]
            for start in range(0, len(pieces), most):
                chunk = pieces[start : start + most]
                labels = [targets[i][first : first + width] for i, first in chunk]
                scores = self._score_chunk(
                    bank, width, [tokens[i] for i, _ in chunk], [rows[i] for i, _ in chunk], labels
                )
                for (i, first), row in zip(chunk, scores):
                    out[i][first : first + len(row)] = row
        return out

    def _score_chunk(self, bank, width, tokens, rows, targets) -> list[np.ndarray]:
        """One score program call: n inputs with up to L = `width` labels each."""
        s = bucket(self.buckets.label_length, max(len(x) for labels in targets for x in labels))
        b, t, batch, ids, _ = self._pad(tokens, rows, batches=self.buckets.score_inputs(width))
        padded = np.zeros((b * width, s), np.int32)  # [B*L, S]; absent labels score 0
        for i, labels in enumerate(targets):
            for j, x in enumerate(labels):
                padded[i * width + j, : len(x)] = x
        program = self.program(ProgramKey("score", b, t, s, width, *bank.shape))
        encoder_tokens, ids = self._put(b, batch, ids)
        decoder_inputs, padded = self._put(b * width, ranking.shift_right(padded), padded)
        features = {
            "encoder_input_tokens": encoder_tokens,
            "task_ids": ids,
            "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": padded,
        }
        out = program(_with_bank(self.params, bank.table, bank.lengths), features)
        out = np.asarray(jax.device_get(out)).reshape(b, width)
        return [out[i, : len(labels)] for i, labels in enumerate(targets)]
