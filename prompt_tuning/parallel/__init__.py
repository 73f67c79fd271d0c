"""Parallelism: the ("data", "model") mesh and its partitioning rules, multi-process start-up,
and the host memory a sharded run needs.

Imports nothing from `prompt_tuning.train` or `prompt_tuning.predict`: both rooms build on this one.
"""
