"""Prediction with a tuned prompt over the frozen model: the predictor (decoding, scoring, rank
classification), prompt ensembles, evaluation, inference, and restoring a run's parameters for them.

Never imports the training loop (`prompt_tuning.train.trainer`/`steps`): evaluation during training,
`pt-eval`, `pt-infer`, `pt-serve` and the tools all call into this room.
"""
