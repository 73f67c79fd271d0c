#!/usr/bin/env bash
# The GPU benchmarks of issue 22 (point 4), as one prepared script: run from the repository root
# on the GPU machine, with $OUT the output folder:
#
#     OUT=/some/folder bash tools/gpu_benchmarks.sh
#
# It prints nvidia-smi, the Python/jax/torch versions and jax.devices(), then, each step in its own
# process under its own timeout, so that one running out of time keeps the others' JSON (the files
# are written to a scratch folder, which goes into $OUT/results.tar after each step: the device
# tool brings back at most 8 files):
# - training, ours vs PEFT (bfloat16 autocast, eager and torch.compile'd), one case at a time:
#   train_<size>-<batch>.json (stdout) and .log (stderr: per-run lines, the table);
# - with BATCHED=1, ours alone with the CPU's matmul layout ("batched"): train_<case>_batched.*;
# - decoding, greedy and rank classification apart: decode_<task>.json and .log.
# Every worker gets --timeout WORKER_TIMEOUT: one still running 30 s before it prints its Python
# stacks, and its killer names the stages it reached (`benchmark.stage`). Where cuda-gdb exists, a
# watchdog also writes the native stacks of any worker still running after STACKS_AFTER seconds
# of a step to native_stacks_<step>.txt.
#
# Runs of 2026-12-04 (H200, jax 0.11.2): greedy decoding ran; our training worker ran out of time
# twice. The stages it logged: 103-129 s to build the run (compiling Flax's one-program random init:
# since replaced by `t5.random_init`'s small programs), then the step's compilation still in XLA's
# HLO passes after 50 s (single-threaded; cuda-gdb's stacks). Hence the long worker timeout, and
# one call holds the first training case and decoding; the second case (and the batched-layout A/B,
# BATCHED=1) go in a second call: TRAIN_CASES=large:8 DECODE_TASKS= OUT=... bash ...
#
# CPU dry run of the script itself (tiny model, short lengths):
#
#     DEVICE=cpu TRAIN_CASES=tiny:2 DECODE_CASES=tiny STEPS=2 WARMUP=1 \
#       TRAIN_ARGS="--matmul-size 64 --input-length 24 --prompt-length 4" \
#       PEFT_MODES=bfloat16-eager RANK_PEFT_MODES=cast OUT=/tmp/gpu_dry bash tools/gpu_benchmarks.sh
set -u -o pipefail

: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
FILES=$(mktemp -d)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
TRAIN_CASES=${TRAIN_CASES:-base:32}
DECODE_TASKS=${DECODE_TASKS-greedy rank}
BATCHED=${BATCHED:-0}
DECODE_CASES=${DECODE_CASES:-base}
PEFT_MODES=${PEFT_MODES:-bfloat16-eager bfloat16-compiled}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
TRAIN_ARGS=${TRAIN_ARGS:-}
DECODE_ARGS=${DECODE_ARGS:-}
WORKER_TIMEOUT=${WORKER_TIMEOUT:-280}
STACKS_AFTER=${STACKS_AFTER:-240}
# Seconds per step: each training case (the first is base:32, the MFU goal's), the batched-layout
# run, each decoding task. By default under 10 minutes in all (the device tool's limit per call).
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-330}
DECODE_TIMEOUT=${DECODE_TIMEOUT:-105}
BATCHED_TIMEOUT=${BATCHED_TIMEOUT:-200}
# PEFT's rank-classification modes (the two fastest on the CPU; compiling each takes a minute).
RANK_PEFT_MODES=${RANK_PEFT_MODES:-cast compile-cast}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

native_stacks() {  # $1: step name; after STACKS_AFTER s, cuda-gdb's backtraces of live workers
  command -v cuda-gdb > /dev/null || return 0
  sleep "$STACKS_AFTER"
  for pid in $(pgrep -f "prompt_tuning[.]perf[.]"); do
    echo "=== worker $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-160)"
    timeout 40 cuda-gdb -batch -p "$pid" -ex "info threads" -ex "thread apply all bt 14" 2>&1 \
      | grep -v "^\[New Thread\|^warning:" | head -c 400000
  done > "$FILES/native_stacks_$1.txt" 2>&1
}

step() {  # $1: name, $2: timeout (s), then the command; stdout to $1.json, stderr to $1.log
  local name=$1 limit=$2
  shift 2
  native_stacks "$name" &
  local watcher=$!
  echo "--- $name ($(date -u +%T), limit ${limit} s)"
  timeout -k 10 "$limit" "$@" > "$FILES/$name.json" 2> "$FILES/$name.log"
  echo "$name: exit $?"
  kill "$watcher" 2> /dev/null
  tar -cf "$OUT/results.tar" -C "$FILES" .
  grep -v '^ *File \|^    ' "$FILES/$name.log" | tail -n 16
}

date -u
timeout 20 nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm \
  --format=csv
timeout 90 "$PY" -c '
import platform
import jax, torch
print("python", platform.python_version(), "jax", jax.__version__, "torch", torch.__version__,
      "cuda", torch.version.cuda, torch.cuda.is_available(), jax.devices())
'

common=(--device "$DEVICE" --dtypes bfloat16 --rounds 1 --steps "$STEPS" --warmup "$WARMUP"
  --timeout "$WORKER_TIMEOUT")
read -r -a cases <<< "$TRAIN_CASES"
for case in "${cases[@]}"; do
  # shellcheck disable=SC2086  # PEFT_MODES, TRAIN_ARGS and DECODE_ARGS are word lists
  step "train_${case/:/-}" "$TRAIN_TIMEOUT" "$PY" tools/benchmark_train.py --vs-peft \
    --peft-modes $PEFT_MODES --cases "$case" "${common[@]}" $TRAIN_ARGS
  if [ "$BATCHED" = 1 ]; then
    # Ours alone with the CPU's matmul layout (precision.matmul_layout): what "einsum" gains here.
    # shellcheck disable=SC2086
    PROMPT_TUNING_MATMUL_LAYOUT=batched step "train_${case/:/-}_batched" "$BATCHED_TIMEOUT" \
      "$PY" tools/benchmark_train.py --cases "$case" "${common[@]}" $TRAIN_ARGS
  fi
done
for task in $DECODE_TASKS; do
  modes=()
  [ "$task" = rank ] && modes=(--peft-modes $RANK_PEFT_MODES)
  # shellcheck disable=SC2086
  step "decode_$task" "$DECODE_TIMEOUT" "$PY" tools/benchmark_decode.py --tasks "$task" \
    "${modes[@]}" --cases $DECODE_CASES "${common[@]}" $DECODE_ARGS
done
date -u
