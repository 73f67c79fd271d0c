"""Measurement: ahead-of-time compilation and memory fit (`aot`, `aot_sweep`), FLOP and byte counts
(`costs`), profiling (`profiling`), the training-step benchmark against HF PEFT (`benchmark`,
`workers`, `train_benchmark`, `matmul`), decoding and rank classification against HF PEFT
(`decode_benchmark`, `decode_workers`), checkpoint loading memory (`loading`) and the server's
load and start-up times (`serve_load`, `serve_ready`). Called by the trainer's logging and by the
thin command-line tools in `tools/`. Except `aot`, these modules import jax and torch only inside
the functions that need them, so a benchmark worker loads only its own system's libraries.
"""
