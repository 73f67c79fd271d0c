"""Analyses of trained prompts (no training, no data): SPoT's task similarity."""

from prompt_tuning.analysis import similarity

__all__ = ["similarity"]
