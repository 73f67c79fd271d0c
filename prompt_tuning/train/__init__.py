"""Prompt tuning of a frozen T5: model wrapper, losses, optimizers, partitioning, data, checkpoints,
prompt files, the training step and loop, evaluation (with rank classification), inference and
prompt ensembles.

Submodules are imported explicitly (`from prompt_tuning.train import trainer`) so that importing the
package stays cheap.
"""
