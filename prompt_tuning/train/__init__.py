"""Training a prompt on a frozen T5: the model wrapper, losses, optimizers, data, checkpoints,
prompt files, the training step and the loop. Parallelism lives in `prompt_tuning.parallel`,
prediction (evaluation, inference, ensembles) in `prompt_tuning.predict`, measurement in
`prompt_tuning.perf`.

Submodules are imported explicitly (`from prompt_tuning.train import trainer`) so that importing the
package stays cheap.
"""
