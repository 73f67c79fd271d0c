"""What a run exports as its prompt, what PROMPT_FILE loads, and the errors for files that are not.

The exported forms are checked against what the module itself prepends (or generates per example):
a folded prompt must be the matrix the encoder sees, an IDPG export must reproduce the generated
prompts, and a multi-task export row t must be task t's prompt.
"""

import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.train import checkpoints, prompt_files

B, T, H = 2, 3, 16
TOKENS = jnp.array([[5, 6, 1], [7, 1, 0]], jnp.int32)
EMBEDDED = jax.random.normal(jax.random.key(3), (B, T, H))


def _trained(module, task_ids=None):
    variables = nn.unbox(module.init(jax.random.key(0), TOKENS, EMBEDDED, task_ids))
    # Move every parameter away from its initial value (a zero-initialized bias, e.g.).
    params = jax.tree.map(
        lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), variables["params"]
    )
    return {"params": params}, {"encoder": {"prompt": jax.device_get(params)}}


@pytest.mark.parametrize(
    "module",
    [
        prompts.Prompt(length=5),
        prompts.DecomposedPrompt(length=5, bottleneck=2),
        prompts.ResidualPrompt(length=5, bottleneck=4),
        prompts.StructuredPrompt(5, num_tasks=1, task_dim=4),
    ],
    ids=lambda m: type(m).__name__,
)
def test_plain_export_is_what_the_module_prepends(module, tmp_path):
    variables, trainable = _trained(module)
    prepended = np.asarray(module.apply(variables, TOKENS, EMBEDDED))  # [B, P, H]
    export = prompt_files.export_form(module, trainable, width=H)
    assert export.kind == prompt_files.PLAIN and export.value.shape == (5, H)
    np.testing.assert_allclose(export.value, prepended[0], rtol=1e-5, atol=1e-6)
    path = prompt_files.write_export(tmp_path, "step_3", export)
    assert path == tmp_path / "prompts" / "step_3.npy"
    np.testing.assert_array_equal(prompt_files.load_prompt_npy(path, (5, H)), export.value)


def test_fold_of_dpt_and_rank_probe_parameters():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(2, 3))  # A [H, b], B [b, P]
    dpt = prompts.DecomposedPrompt(length=3, bottleneck=2)
    folded = prompt_files.export_form(dpt, {"encoder": {"prompt": {"a": a, "b": b}}}, width=6).value
    np.testing.assert_allclose(folded, (a @ b).T, rtol=1e-6)
    probe = prompts.RankProbePrompt(length=3)
    sigma = np.array([1.0, -2.0, 0.5])
    folded = prompt_files.export_form(
        probe, {"encoder": {"prompt": {"sigma": sigma}}}, width=6
    ).value
    u, v = (np.asarray(x) for x in probe.bases(6))  # U [H, r], V [r, P]
    np.testing.assert_allclose(folded, ((u * np.maximum(sigma, 0)) @ v).T, rtol=1e-5, atol=1e-6)
    assert np.linalg.matrix_rank(folded) == 2  # the negative entry drops a direction


def test_idpg_exports_its_generator_not_the_bias_and_the_file_reproduces_its_prompts(tmp_path):
    module = prompts.InstancePrompt(3, hidden_dim=4)
    variables, trainable = _trained(module)
    generated = np.asarray(module.apply(variables, TOKENS, EMBEDDED))  # [B, P, H], per example
    export = prompt_files.export_form(module, trainable, width=H)
    assert export.kind == prompt_files.PARAMETERS
    assert set(export.value) == {"prompt", "generator/down/kernel", "generator/down/bias",
                                 "generator/up_kernel"}  # fmt: skip
    assert "1 [P, H]" not in export.describe(module) and "no single [P, H]" in export.describe(
        module
    )
    path = prompt_files.write_export(tmp_path, "best", export)
    assert path.name == "best.npz"
    # PROMPT_FILE loads the .npz into a freshly initialized model of the same configuration.
    fresh = nn.unbox(module.init(jax.random.key(9), TOKENS, EMBEDDED))["params"]
    loaded = prompt_files.load_into({"encoder": {"prompt": fresh}}, path, module)
    again = module.apply({"params": loaded["encoder"]["prompt"]}, TOKENS, EMBEDDED)
    np.testing.assert_allclose(np.asarray(again), generated, rtol=1e-6)
    # ... and refuses it where no such parameters exist, or as a plain prompt.
    with pytest.raises(prompt_files.PromptFileError, match="unexpected generator/down/kernel"):
        prompt_files.load_into({"encoder": {"prompt": {"prompt": fresh["prompt"]}}}, path, None)
    with pytest.raises(prompt_files.PromptFileError, match="instance-dependent"):
        prompt_files.load_prompt_npy(path)


def test_multi_task_structured_prompt_exports_every_task_and_loads_into_a_bank(tmp_path):
    module = prompts.StructuredPrompt(4, num_tasks=3, task_dim=4, hypernetwork="low_rank", rank=2)
    ids = jnp.array([2, 0])
    variables, trainable = _trained(module, ids)
    export = prompt_files.export_form(module, trainable, width=H)
    assert export.kind == prompt_files.MULTI_TASK and export.value.shape == (3, 4, H)
    for task in range(3):
        want = module.apply(variables, TOKENS, EMBEDDED, jnp.array([task, task]))[0]
        np.testing.assert_allclose(export.value[task], want, rtol=1e-5, atol=1e-6)
    path = prompt_files.write_export(tmp_path, "step_1", export)
    bank = prompts.PromptBank(num_prompts=3, length=4)
    fresh = nn.unbox(bank.init(jax.random.key(0), TOKENS, EMBEDDED, ids))["params"]
    loaded = prompt_files.load_into({"encoder": {"prompt": fresh}}, path, bank)
    out = bank.apply({"params": loaded["encoder"]["prompt"]}, TOKENS, EMBEDDED, ids)
    np.testing.assert_allclose(out, module.apply(variables, TOKENS, EMBEDDED, ids), rtol=1e-5)
    plain = prompts.Prompt(4)
    current = {"encoder": nn.unbox(plain.init(jax.random.key(0), TOKENS, EMBEDDED))}
    current["encoder"]["prompt"] = current["encoder"].pop("params")
    with pytest.raises(prompt_files.PromptFileError, match=r"3 task prompts .*prompt_bank.gin"):
        prompt_files.load_into(current, path, plain)
    with pytest.raises(prompt_files.PromptFileError, match="--task_id"):
        prompt_files.load_prompt_npy(path)


def test_a_failing_fold_is_not_swallowed():
    class BrokenFold(prompts.Prompt):
        def fold(self, variables, width=None):
            raise TypeError("fold bug")

    module = BrokenFold(4)
    _, trainable = _trained(module)
    with pytest.raises(TypeError, match="fold bug"):
        prompt_files.export_form(module, trainable, width=H)


def test_a_plain_array_never_replaces_a_generator_bias(tmp_path):
    # The reverse of the old export bug: a [P, H] file must not load into IDPG's `prompt` bias.
    module = prompts.InstancePrompt(3, hidden_dim=4)
    _, trainable = _trained(module)
    np.save(tmp_path / "p.npy", np.zeros((3, H), np.float32))
    with pytest.raises(prompt_files.PromptFileError, match="not a prompt table"):
        prompt_files.load_into(trainable, tmp_path / "p.npy", module)


def test_no_export_without_a_prompt():
    assert prompt_files.export_form(None, {"encoder": {}}) is None


def test_files_that_are_not_arrays_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="PROMPT_FILE .*missing.npy does not exist"):
        prompt_files.read_prompt_file(tmp_path / "missing.npy")
    (tmp_path / "pickled.npy").write_bytes(pickle.dumps({"prompt": [1.0, 2.0]}))
    (tmp_path / "text.npy").write_text("0.1 0.2\n0.3 0.4\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "flat.npy", np.zeros(7, np.float32))
    cases = {
        "pickled.npy": "a Python pickle",
        "text.npy": "it starts with",
        "empty.npy": "an empty file",
        "objects.npy": "a .npy of pickled Python objects",
    }
    for name, reason in cases.items():
        with pytest.raises(prompt_files.PromptFileError) as error:
            prompt_files.read_prompt_file(tmp_path / name)
        message = str(error.value)
        assert f"PROMPT_FILE {tmp_path / name} is not a NumPy array file ({reason}" in message
        assert "allow_pickle" not in message
    with pytest.raises(prompt_files.PromptFileError, match=r"flat.npy holds shape \(7,\)"):
        prompt_files.read_prompt_file(tmp_path / "flat.npy")


def test_trained_params_written_without_training_are_read_back(tmp_path):
    prompt = np.arange(6, dtype=np.float32).reshape(2, 3)
    params = {"encoder": {"prompt": {"prompt": prompt}}}
    checkpoints.save_trained_params(tmp_path, 4, params, {"seed": 0, "task": "t"})
    step, read = checkpoints.load_trained_params(tmp_path)
    assert step == 4
    np.testing.assert_array_equal(read["encoder"]["prompt"]["prompt"], prompt)
