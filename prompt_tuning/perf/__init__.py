"""Measurement: ahead-of-time compilation and memory fit (`aot`), FLOP and byte counts (`costs`) and
profiling (`profiling`). Called by the trainer's logging and by the benchmarks in `tools/`.
"""
