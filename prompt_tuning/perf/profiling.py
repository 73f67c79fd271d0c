"""Where a compiled step's time goes: per-op times from `jax.profiler`, grouped by what they do.

XLA:CPU records one trace event per executed HLO instruction ("thunk": a fusion, a dot, a copy)
under `jax.profiler.trace`. `profile_compiled` runs a compiled function under the profiler, matches
each event to its instruction in the optimized HLO (`compiled.as_text()`) and sums the durations
per category (`categorize`): matmuls (forward / backward), attention softmax, mask and bias,
dropout, layer norm, relative-position bias, MLP activations, logits and loss, layout ops
(transposes, copies, converts) and the optimizer. The categories come from the instruction's
opcode, the ops fused into it and its `op_name` metadata, which carries the Flax module path
(`encoder/layers_3/attention/...`) and `transpose(jvp(...))` for the backward pass.

Event durations are wall times of each op; XLA:CPU may run independent ops concurrently, so their
sum (`op_seconds`) can exceed the step's wall time. The shares are what to read.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

_LAYOUT_OPS = {"copy", "transpose", "convert", "bitcast", "reshape", "broadcast", "slice"}
_TRIVIAL_OPS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One instruction of an HLO module.

    Attributes:
      name: its name (`ynn_fusion.12`), the trace event's name.
      opcode: `fusion`, `dot`, `copy`, ...
      shape: result shape text, e.g. `f32[8,228,512]{2,1,0}`.
      op_name: the `op_name` metadata (JAX's name stack), "" when absent.
      fused_ops: opcodes inside a fusion's computation (its own opcode otherwise).
    """

    name: str
    opcode: str
    shape: str
    op_name: str
    fused_ops: frozenset[str]


_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s")
_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(")


def hlo_instructions(hlo_text: str) -> dict[str, Instruction]:
    """Every instruction of an optimized HLO module, by name, with the ops its fusion calls.

    An instruction without `op_name` of its own takes that of its fusion's dot, or else of its
    first fused instruction that has one, or else of its first operand that has one (XLA's
    library fusions of a dot often carry no metadata; the casts feeding them do).
    """
    computations: dict[str, list[tuple[str, str]]] = {}  # name -> [(opcode, op_name)]
    raw: list[tuple[str, str, str, str, str | None, list[str]]] = []
    current = None
    for line in hlo_text.splitlines():
        if line and not line.startswith(" "):
            header = _HEADER.match(line)
            current = header.group(1) if header and line.rstrip().endswith("{") else None
            if current:
                computations[current] = []
            continue
        match = _LINE.match(line)
        if not match or current is None:
            continue
        name, shape, opcode = match.groups()
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        operands = re.findall(r"%([\w.\-]+)", line[match.end() :].split("), ")[0])
        computations[current].append((opcode, op_name))
        raw.append((name, opcode, shape, op_name, calls and calls.group(1), operands))
    names = {entry[0]: entry[3] for entry in raw}
    out = {}
    for name, opcode, shape, op_name, calls, operands in raw:
        fused = computations.get(calls, [(opcode, op_name)]) if calls else [(opcode, op_name)]
        if not op_name:
            named = [n for op, n in fused if n and op == "dot"] + [n for _, n in fused if n]
            named += [names[o] for o in operands if names.get(o)]
            op_name = named[0] if named else ""
        out[name] = Instruction(name, opcode, shape, op_name, frozenset(op for op, _ in fused))
    return out


def categorize(instruction: Instruction) -> str:
    """The category of one instruction (see the module docstring)."""
    ops, op_name = instruction.fused_ops, instruction.op_name
    backward = "transpose(" in op_name
    if ops & {"dot", "convolution"}:
        return "matmul (backward)" if backward else "matmul (forward)"
    if re.search(r"Dropout|threefry|random_bits|random_bernoulli|_bernoulli|_uniform", op_name) or (
        ops & {"rng-bit-generator", "rng"}
    ):
        return "dropout (random bits, masks)"
    if "relpos_bias" in op_name:
        return "relative-position bias"
    if re.search(r"layer_norm|encoder_norm|decoder_norm", op_name):
        return "layer norm"
    if re.search(r"attention/", op_name):
        if ops - _TRIVIAL_OPS <= _LAYOUT_OPS:
            return "attention layout (transposes, converts)"
        return "attention softmax, mask, bias"
    if "/mlp/" in op_name:
        return "MLP activations"
    if "logits_dense" in op_name or re.search(r"take_along_axis|logsumexp|log_softmax", op_name):
        return "logits and loss"
    if "EncoderDecoder" in op_name:
        if ops - _TRIVIAL_OPS <= _LAYOUT_OPS:
            return "other layout (transposes, copies, converts)"
        return "other model ops (residual adds, embedding, prompt)"
    if "jvp(" in op_name or "transpose(" in op_name:
        return "logits and loss"
    if op_name:
        return "optimizer and metrics"
    return "unattributed (copies, loop control)"


def _trace_events(trace_dir: str) -> list[dict[str, Any]]:
    """The complete ("X") events of the perfetto trace `jax.profiler.trace` wrote."""
    found = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)
    if not found:
        raise RuntimeError(f"jax.profiler wrote no perfetto trace under {trace_dir}.")
    with gzip.open(sorted(found)[-1]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X"]


def profile_compiled(
    run: Callable[[], Any],
    hlo_text: str,
    steps: int = 1,
    top: int = 15,
    classify: Callable[[Instruction], str] = categorize,
) -> dict[str, Any]:
    """Runs `run()` (one blocking call of a compiled step) `steps` times under `jax.profiler`.

    Args:
      run: executes the compiled function once and blocks until its results are ready.
      hlo_text: that function's optimized HLO (`compiled.as_text()`).
      steps: profiled calls (durations are averaged per call).
      top: how many of the slowest instructions to list.
      classify: instruction -> category.

    Returns:
      `op_seconds` (sum of op durations per call), `categories` ({category: seconds per call},
      slowest first), `shares` (fractions of `op_seconds`), `top_ops` (the slowest instructions
      with category, op_name and shape) and `events` (matched op events per call).

    Raises:
      RuntimeError: the profiler recorded no per-op events for this backend.
    """
    import jax  # noqa: PLC0415

    instructions = hlo_instructions(hlo_text)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                run()
        events = _trace_events(trace_dir)
    per_op: dict[str, float] = collections.Counter()
    matched = 0
    for event in events:
        if event["name"] in instructions:
            per_op[event["name"]] += event.get("dur", 0) / 1e6 / steps
            matched += 1
    if not matched:
        raise RuntimeError(
            "The profiler recorded no per-op events of this computation (a backend without "
            "thunk tracing?); use XLA's cost analysis instead."
        )
    categories: dict[str, float] = collections.Counter()
    for name, seconds in per_op.items():
        categories[classify(instructions[name])] += seconds
    total = sum(categories.values())
    ordered = dict(sorted(categories.items(), key=lambda kv: -kv[1]))
    slowest = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return {
        "op_seconds": total,
        "categories": ordered,
        "shares": {k: v / total for k, v in ordered.items()},
        "top_ops": [_describe(instructions[n], s, classify) for n, s in slowest],
        "events": matched // steps,
    }


def _describe(instruction: Instruction, seconds: float, classify) -> dict[str, Any]:
    return {
        "name": instruction.name,
        "seconds": seconds,
        "category": classify(instruction),
        "op_name": instruction.op_name[-120:],
        "shape": instruction.shape,
    }


def format_profile(profile: dict[str, Any], wall_seconds: float | None = None) -> Sequence[str]:
    """Markdown table rows of a `profile_compiled` result (category, ms per step, share)."""
    lines = ["| category | ms per step (sum of ops) | share |", "|---|---:|---:|"]
    for name, seconds in profile["categories"].items():
        lines.append(f"| {name} | {seconds * 1e3:.1f} | {profile['shares'][name]:.1%} |")
    total = f"| all ops | {profile['op_seconds'] * 1e3:.1f} | 100% |"
    lines.append(total if wall_seconds is None else total + f" (step wall {wall_seconds:.3f} s)")
    return lines
