"""analysis/neighbors.frozen_embedding: a run without a checkpoint gets the trainer's random T5."""

import jax
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.analysis import neighbors
from prompt_tuning.analysis.errors import AnalysisError
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.t5 import network
from prompt_tuning.train import builder


def _run(seed: int) -> builder.RunConfig:
    module = network.EncoderDecoder(t5_config.tiny(), prompt=prompts.Prompt(length=3))
    return builder.RunConfig(
        model=module,
        task_feature_lengths={"inputs": 8, "targets": 4},
        batch_size=8,
        random_seed=seed,
    )


def test_the_random_frozen_model_is_the_one_the_trainer_builds():
    run = _run(seed=3)
    embedding = neighbors.frozen_embedding(run=run)
    trained = builder.build_run(run)  # the trainer's builder: its frozen parameters
    expected = np.asarray(jax.device_get(trained.frozen["token_embedder"]["embedding"]))
    config = t5_config.tiny()
    assert embedding.shape == (config.vocab_size, config.emb_dim)
    assert embedding.dtype == np.float32
    np.testing.assert_array_equal(embedding, expected.astype(np.float32))
    other = neighbors.frozen_embedding(run=_run(seed=4))
    assert not np.array_equal(embedding, other)  # RANDOM_SEED decides the model


def test_no_frozen_model_is_named():
    with pytest.raises(AnalysisError, match="pass --checkpoint"):
        neighbors.frozen_embedding()
