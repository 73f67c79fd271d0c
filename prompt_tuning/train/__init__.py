"""Prompt tuning of a frozen T5: model wrapper, losses, optimizers, partitioning, data, checkpoints,
the training loop and (E2) evaluation, inference and ensembles.

Submodules are imported explicitly (`from prompt_tuning.train import trainer`) so that importing the
package stays cheap.
"""
