"""tools/aot_memory.py on the tiny T5 and 8 fake devices: arguments equal the shards' bytes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.parallel import partitioning
from prompt_tuning.perf import aot_sweep
from prompt_tuning.t5 import checkpoint_tree, network
from prompt_tuning.t5 import config as t5_config
from prompt_tuning.train import optimizers, params
from prompt_tuning.train.model import PromptModel
from tools import aot_memory

B, T, P, S = 8, 32, 4, 4


@pytest.fixture(scope="module")
def results():
    argv = ["--sizes", "tiny", "--devices", "8", "--partitions", "4", "--remat", "none"]
    argv += ["full", "--batch", str(B), "--inputs", str(T), "--prompt", str(P)]
    argv += ["--targets", str(S)]
    return aot_memory.main(argv)


def _expected_train_arguments(model_axis):
    """Per-device bytes of the step's inputs, from the shardings alone."""
    mesh = partitioning.make_mesh(model_axis)
    model = PromptModel(network.EncoderDecoder(t5_config.tiny(), prompt=prompts.Prompt(P)))
    boxed = params.abstract_params(model, {"inputs": T, "targets": S})
    shardings = checkpoint_tree.flatten(partitioning.params_shardings(boxed, mesh))
    total = 0
    for name, leaf in checkpoint_tree.flatten(jax.tree.map(lambda x: x, boxed)).items():
        shape = leaf.value.shape
        if name.startswith("encoder/prompt"):
            trainable = {"p": jax.ShapeDtypeStruct(shape, jnp.float32)}
            state = jax.eval_shape(optimizers.adafactor().init, trainable)
            total += sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
            total += int(np.prod(shape)) * 4  # the float32 prompt
        else:
            split = partitioning.MODEL_AXIS in shardings[name].spec
            # FROZEN_DTYPE="bfloat16" stores kernels and the embedding in bfloat16; layer-norm
            # scales and relative-position tables stay float32.
            size = 2 if name.rsplit("/", 1)[-1] in ("kernel", "embedding") else 4
            total += int(np.prod(shape)) * size // (model_axis if split else 1)
    total += 4 * 8 // (8 // model_axis) * (T + 3 * S)  # 4 int32 batch arrays, split over data
    return total + 4 + 8  # the step counter and the PRNG key


def test_train_and_decode_memory_on_a_fake_mesh(results, tmp_path, capsys):
    train = {r["remat"]: r for r in results if r["program"] == "train"}
    (decode,) = [r for r in results if r["program"] == "decode"]
    assert sorted(train) == ["full", "none"] and decode["mesh"] == {"data": 2, "model": 4}
    # XLA may not count the scalar step and key buffers (12 bytes); the frozen shards are exact.
    expected = _expected_train_arguments(4)
    assert 0 <= expected - train["none"]["argument_bytes"] <= 12
    assert expected < _expected_train_arguments(1) / 2  # the model axis splits the frozen weights
    # Rematerialisation lowers the temporaries (each layer's activations are recomputed).
    assert train["full"]["temp_bytes"] < train["none"]["temp_bytes"]
    assert decode["argument_bytes"] > 0 and decode["temp_bytes"] > 0
    table = aot_sweep.markdown_table(results)
    assert "| tiny | 8 | 2 × 4 | train | full | bfloat16 | float32 |" in table
    assert "fits 16 GiB" in table
    # --table prints the same table from the printed JSON lines (a run's log), compiling nothing.
    log = tmp_path / "run.log"
    log.write_text("START\n" + "\n".join(json.dumps(r) for r in results) + "\n")
    capsys.readouterr()
    assert aot_memory.main(["--table", str(log)]) == results
    assert table in capsys.readouterr().out
