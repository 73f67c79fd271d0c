"""gin files of `python -m t5x.train`, `t5x.eval`, `t5x.infer` (README; package data)."""
