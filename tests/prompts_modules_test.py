"""Numerics of the prompt modules against hand-written numpy versions of the papers' equations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts

B, T, H = 3, 5, 8


def _inputs(seed=0, width=H):
    rng = np.random.default_rng(seed)
    tokens = np.array([[5, 6, 7, 0, 0], [9, 3, 4, 2, 8], [1, 0, 0, 0, 0]], np.int32)
    embedded = rng.normal(size=(B, T, width)).astype(np.float32)
    return jnp.asarray(tokens), jnp.asarray(embedded)


def _init(module, *args, **kwargs):
    return nn.unbox(module.init(jax.random.key(0), *args, **kwargs))


def _set(variables, **values):
    params = jax.tree.map(lambda x: x, variables["params"])
    for path, value in values.items():
        node = params
        *parents, leaf = path.split("/")
        for key in parents:
            node = node[key]
        assert node[leaf].shape == np.shape(value), path
        node[leaf] = jnp.asarray(value, jnp.float32)
    return {"params": params}


def _masked_mean(values, tokens):
    mask = (np.asarray(tokens) > 0)[..., None]
    return (np.asarray(values) * mask).sum(1) / mask.sum(1)


def test_prompt_is_its_parameter_for_every_example():
    tokens, embedded = _inputs()
    module = prompts.Prompt(4)
    variables = _init(module, tokens, embedded)
    out = module.apply(variables, tokens, embedded)
    assert out.shape == (B, 4, H)
    for b in range(B):
        np.testing.assert_array_equal(out[b], variables["params"]["prompt"])
    np.testing.assert_array_equal(module.fold(variables), variables["params"]["prompt"])


@pytest.mark.parametrize("hypernetwork", ["linear", "low_rank", "mlp"])
def test_structured_prompt_follows_equations(hypernetwork):
    tokens, embedded = _inputs()
    module = prompts.StructuredPrompt(4, num_tasks=3, task_dim=6, hypernetwork=hypernetwork, rank=2)
    task_ids = jnp.array([2, 0, 2])
    variables = _init(module, tokens, embedded, task_ids)
    p = {k: np.asarray(v) for k, v in variables["params"].items()}
    out = np.asarray(module.apply(variables, tokens, embedded, task_ids))
    for b, task in enumerate([2, 0, 2]):
        e = p["task_embedding"][task]  # [k]
        if hypernetwork == "linear":  # M(W e + b)
            flat = p["kernel"].reshape(6, -1).T @ e + p["bias"].ravel()
        elif hypernetwork == "low_rank":  # M(C F e + b)
            flat = p["kernel_c"].reshape(2, -1).T @ (p["kernel_f"].T @ e) + p["bias"].ravel()
        else:  # M(W2 gelu(W1 e + b1) + b2), GELU in its tanh form
            x = p["hidden_kernel"].T @ e + p["hidden_bias"]
            gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
            flat = p["kernel"].reshape(len(x), -1).T @ gelu + p["bias"].ravel()
        np.testing.assert_allclose(out[b], flat.reshape(4, H), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[0], out[2])
    default = module.apply(variables, tokens, embedded, None)  # No task ids: task 0.
    np.testing.assert_allclose(default[0], out[1], rtol=1e-6)
    np.testing.assert_allclose(module.fold(variables, task_id=2), out[0], rtol=1e-6)
    np.testing.assert_allclose(
        module.fold(variables)[2], out[0], rtol=1e-6
    )  # every task: [N, P, H]
    with pytest.raises(ValueError, match=r"Task id 3 .* 3 task ids \(0\.\.2\)"):  # never NaN
        module.apply(variables, tokens, embedded, jnp.array([0, 3, 1]))


def test_structured_linear_with_k1_is_plain_prompt_tuning():
    # Section 3.1: a 1 x nd hypernetwork with k = 1 represents any prompt R.
    tokens, embedded = _inputs()
    target = np.random.default_rng(1).normal(size=(4, H)).astype(np.float32)
    module = prompts.StructuredPrompt(4, num_tasks=1, task_dim=1, hypernetwork="linear")
    variables = _init(module, tokens, embedded)
    exact = _set(variables, task_embedding=[[1.0]], kernel=target[None], bias=np.zeros((4, H)))
    np.testing.assert_allclose(module.apply(exact, tokens, embedded)[1], target, rtol=1e-6)
    # In general the prompt is the affine map e * W + b of the scalar task embedding.
    p = variables["params"]
    expected = p["task_embedding"][0, 0] * p["kernel"][0] + p["bias"]
    np.testing.assert_allclose(module.apply(variables, tokens, embedded)[0], expected, rtol=1e-5)


def test_decomposed_prompt_is_product_and_full_bottleneck_represents_any_prompt():
    tokens, embedded = _inputs()
    length = 6
    module = prompts.DecomposedPrompt(length, bottleneck=length)  # b = min(P, H)
    variables = _init(module, tokens, embedded)
    a, b = (np.asarray(variables["params"][k]) for k in ("a", "b"))
    out = module.apply(variables, tokens, embedded)
    np.testing.assert_allclose(out[0], (a @ b).T, rtol=1e-5, atol=1e-6)
    # Solve A, B from the SVD of a random target: P_emb = R^T = U S V^T, A = U S, B = V^T.
    target = np.random.default_rng(2).normal(size=(length, H))
    u, s, vt = np.linalg.svd(target.T, full_matrices=False)
    solved = _set(variables, a=u * s, b=vt)
    np.testing.assert_allclose(module.apply(solved, tokens, embedded)[2], target, atol=1e-5)
    np.testing.assert_allclose(module.fold(solved), target, atol=1e-5)


def test_decomposed_prompt_rank_is_bounded_by_bottleneck():
    tokens, embedded = _inputs()
    module = prompts.DecomposedPrompt(6, bottleneck=2)
    variables = _init(module, tokens, embedded)
    assert np.linalg.matrix_rank(np.asarray(module.apply(variables, tokens, embedded)[0])) == 2


def test_rank_probe_reparameterization_and_positive_count():
    tokens, embedded = _inputs()
    length = 4
    module = prompts.RankProbePrompt(length, sigma_init=0.7)
    variables = _init(module, tokens, embedded)
    u, v = (np.asarray(x) for x in module.bases(H))
    np.testing.assert_allclose(u.T @ u, np.eye(length), atol=1e-5)  # U [H, r] orthonormal columns
    np.testing.assert_allclose(v @ v.T, np.eye(length), atol=1e-5)  # V [r, P] orthonormal rows
    sigma = np.array([1.5, -0.2, 0.3, -1.0], np.float32)
    probed = _set(variables, sigma=sigma)
    expected = (u @ np.diag(np.maximum(sigma, 0)) @ v).T  # (U ReLU(Sigma) V)^T
    out = module.apply(probed, tokens, embedded)
    np.testing.assert_allclose(out[1], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(module.fold(probed, width=H), expected, rtol=1e-5, atol=1e-6)
    assert np.linalg.matrix_rank(np.asarray(out[0]), tol=1e-5) == 2
    assert prompts.num_positive(probed) == 2
    assert prompts.num_positive({"params": {"encoder": {"prompt": probed["params"]}}}) == 2
    assert prompts.num_positive(variables) == length  # Positive initialization.


def test_residual_prompt_matches_numpy_and_folds():
    tokens, embedded = _inputs()
    module = prompts.ResidualPrompt(4, bottleneck=3)
    variables = _init(module, tokens, embedded)
    p = jax.tree.map(np.asarray, variables["params"])
    hidden = np.maximum(p["prompt"] @ p["down"]["kernel"] + p["down"]["bias"], 0)
    hidden = hidden @ p["up"]["kernel"] + p["up"]["bias"] + 0.1  # + 0.1 to make LN nontrivial
    mean, var = hidden.mean(-1, keepdims=True), hidden.var(-1, keepdims=True)
    shifted = _set(
        variables, **{"up/bias": p["up"]["bias"] + 0.1, "layer_norm/scale": np.full(H, 2.0)}
    )
    normed = (hidden - mean) / np.sqrt(var + 1e-5) * 2.0 + p["layer_norm"]["bias"]
    out = module.apply(shifted, tokens, embedded)
    np.testing.assert_allclose(out[0], normed + p["prompt"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(module.fold(shifted), out[2], rtol=1e-6)


def test_phm_kernel_is_sum_of_kronecker_products():
    rng = np.random.default_rng(3)
    n, fan_in, fan_out = 2, 6, 4
    rules = rng.normal(size=(n, n, n)).astype(np.float32)
    factors = rng.normal(size=(n, fan_in // n, fan_out // n)).astype(np.float32)
    expected = sum(np.kron(rules[i], factors[i]) for i in range(n))
    np.testing.assert_allclose(prompts.phm_kernel(rules, factors), expected, rtol=1e-5)
    layer = prompts.PHMDense(fan_out, n)
    x = jnp.asarray(rng.normal(size=(3, fan_in)), jnp.float32)
    variables = _init(layer, x)
    p = variables["params"]
    kernel = sum(np.kron(p["rules"][i], p["factors"][i]) for i in range(n))
    np.testing.assert_allclose(layer.apply(variables, x), x @ kernel + p["bias"], rtol=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        _init(prompts.PHMDense(5, n), x)


@pytest.mark.parametrize("layer", ["dense", "phm"])
def test_idpg_with_zero_generator_weights_is_plain_prompt(layer):
    tokens, embedded = _inputs()
    module = prompts.InstancePrompt(4, hidden_dim=4, layer=layer, phm_rank=2)
    variables = _init(module, tokens, embedded)
    zero_generator = {
        "params": {
            "prompt": variables["params"]["prompt"],
            "generator": jax.tree.map(jnp.zeros_like, variables["params"]["generator"]),
        }
    }
    out = module.apply(zero_generator, tokens, embedded)
    for b in range(B):
        np.testing.assert_array_equal(out[b], variables["params"]["prompt"])


def test_idpg_dense_generator_matches_numpy_and_ignores_padding():
    tokens, embedded = _inputs()
    module = prompts.InstancePrompt(4, hidden_dim=3)
    variables = _init(module, tokens, embedded)
    p = jax.tree.map(np.asarray, variables["params"])
    sentence = _masked_mean(embedded, tokens)  # M(x): mean over real tokens
    hidden = np.maximum(
        sentence @ p["generator"]["down"]["kernel"] + p["generator"]["down"]["bias"], 0
    )
    expected = np.einsum("bm,mph->bph", hidden, p["generator"]["up_kernel"]) + p["prompt"]
    out = module.apply(variables, tokens, embedded)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    noisy = jnp.where((tokens > 0)[..., None], embedded, 100.0)  # change only padded positions
    np.testing.assert_allclose(module.apply(variables, tokens, noisy), out, rtol=1e-6)


def test_idpg_encoder_sentence_encoder_pools_encoder_output():
    tokens, embedded = _inputs()
    encoder_output = jnp.asarray(np.random.default_rng(4).normal(size=(B, T, H)), jnp.float32)
    module = prompts.InstancePrompt(4, hidden_dim=3, sentence_encoder="encoder")
    assert module.needs_encoder_output and not module.per_layer
    variables = _init(module, tokens, embedded, encoder_output=encoder_output)
    with_encoder = module.apply(variables, tokens, embedded, encoder_output=encoder_output)
    as_embeddings = prompts.InstancePrompt(4, hidden_dim=3).apply(variables, tokens, encoder_output)
    np.testing.assert_allclose(with_encoder, as_embeddings, rtol=1e-6)
    with pytest.raises(ValueError, match="encoder_output"):
        module.apply(variables, tokens, embedded)


@pytest.mark.parametrize("layer_input", ["first", "previous"])
@pytest.mark.parametrize("sharing", ["S", "M", "L"])
def test_multi_layer_idpg_layer_prompts(sharing, layer_input):
    tokens, embedded = _inputs()
    length, layers = 2, 3
    module = prompts.InstancePrompt(
        length, hidden_dim=4, multi_layer=True, num_layers=layers, sharing=sharing,
        layer_input=layer_input,
    )  # fmt: skip
    assert module.per_layer
    hidden = jnp.asarray(np.random.default_rng(5).normal(size=(B, length + T, H)), jnp.float32)

    def run(m):
        return [m(tokens, embedded)] + [m.layer_prompt(i, tokens, hidden) for i in (1, 2)]

    variables = nn.unbox(nn.init(run, module)(jax.random.key(0)))
    outs = nn.apply(run, module)(variables)
    p = jax.tree.map(np.asarray, variables["params"])
    sentence = _masked_mean(embedded, tokens)
    pooled = _masked_mean(hidden[:, length:], tokens)  # previous layer over real positions
    for i, out in enumerate(outs):
        g = p[f"generator_{i}"] if sharing == "L" else p["generator"]
        bias = p["prompt"][i] if sharing in ("M", "L") else p["prompt"]
        x = sentence if i == 0 or layer_input == "first" else pooled
        h = np.maximum(x @ g["down"]["kernel"] + g["down"]["bias"], 0)
        expected = np.einsum("bm,mph->bph", h, g["up_kernel"]) + bias
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_idpg_rejects_bad_configuration():
    tokens, embedded = _inputs()
    with pytest.raises(ValueError, match="num_layers"):
        _init(prompts.InstancePrompt(2, hidden_dim=4, multi_layer=True), tokens, embedded)
    with pytest.raises(ValueError, match="sentence_dim"):
        _init(prompts.InstancePrompt(2, hidden_dim=4, sentence_dim=300), tokens, embedded)
    with pytest.raises(ValueError, match="must divide"):
        _init(prompts.InstancePrompt(2, hidden_dim=4, layer="phm", phm_rank=3), tokens, embedded)


def test_deep_prompt_gives_each_layer_its_own_prompt():
    tokens, embedded = _inputs()
    module = prompts.DeepPrompt(2, num_layers=3)
    assert module.per_layer
    hidden = jnp.zeros((B, 2 + T, H))

    def run(m):
        return [m(tokens, embedded)] + [m.layer_prompt(i, tokens, hidden) for i in (1, 2)]

    variables = nn.unbox(nn.init(run, module)(jax.random.key(0)))
    table = variables["params"]["prompt"]  # [L, P, H]
    assert table.shape == (3, 2, H)
    for i, out in enumerate(nn.apply(run, module)(variables)):
        np.testing.assert_array_equal(out, jnp.broadcast_to(table[i], (B, 2, H)))
    assert not np.allclose(table[0], table[1])
