"""Analyses of trained prompts (no training, no data), the logic of the analysis tools in tools/.

- `similarity`: SPoT's task similarity (`tools/prompt_similarity.py`);
- `neighbors`: nearest vocabulary tokens of a prompt's positions (`tools/nearest_neighbors.py`);
- `rank_probe`: the rank of a DPT rank-probe prompt over training (`tools/rank_probe.py`);
- `learning_curves`: metrics.jsonl as curves (`tools/learning_curves.py`);
- `tables`: Markdown tables; `errors.AnalysisError`: an input is missing or inconsistent.
"""

from prompt_tuning.analysis import similarity

__all__ = ["similarity"]
