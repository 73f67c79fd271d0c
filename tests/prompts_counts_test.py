"""Trainable-parameter counts of every prompt parameterization against the papers' numbers.

Shapes come from `jax.eval_shape`, so even T5-XXL widths allocate nothing.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts


def _init_all_layers(module, input_tokens, embedded, num_layers):
    """Calls the prompt and, for per-layer prompts, every `layer_prompt` (as the encoder does).

    Multi-task prompts get task ids (they refuse a batch without them)."""
    multi_task = getattr(module, "num_tasks", 1) > 1
    task_ids = jnp.zeros((input_tokens.shape[0],), jnp.int32) if multi_task else None
    out = module(input_tokens, embedded, task_ids)
    if getattr(module, "per_layer", False):
        hidden = jnp.zeros(
            (embedded.shape[0], module.length + embedded.shape[1], embedded.shape[2])
        )
        for i in range(1, num_layers):
            out = out + module.layer_prompt(i, input_tokens, hidden, None)
    return out


def count_params(module: nn.Module, width: int, num_layers: int = 1) -> int:
    """Number of parameters `module` creates for model dim `width` (H)."""
    tokens = jnp.ones((2, 3), jnp.int32)
    embedded = jnp.zeros((2, 3, width))
    init = nn.init(lambda m: _init_all_layers(m, tokens, embedded, num_layers), module)
    shapes = jax.eval_shape(init, jax.random.key(0))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(shapes)["params"]))


# Lester et al. (2021), Table 4: (model dim H, prompt length P) -> trainable parameters.
# The table's T5-Small P=20 entry reads 10,420, a misprint of 20 * 512 = 10,240 (every other entry
# is P * H), so it is not listed here.
LESTER_TABLE_4 = {
    (512, 1): 512, (512, 5): 2_560, (512, 50): 25_600, (512, 100): 51_200,
    (512, 150): 76_800,
    (768, 1): 768, (768, 5): 3_840, (768, 20): 15_360, (768, 50): 38_400, (768, 100): 76_800,
    (768, 150): 115_200,
    (1024, 1): 1_024, (1024, 5): 5_120, (1024, 20): 20_480, (1024, 50): 51_200,
    (1024, 100): 102_400, (1024, 150): 153_600,
    (2048, 1): 2_048, (2048, 5): 10_240, (2048, 20): 40_960, (2048, 50): 102_400,
    (2048, 100): 204_800, (2048, 150): 307_200,
    (4096, 1): 4_096, (4096, 5): 20_480, (4096, 20): 81_920, (4096, 50): 204_800,
    (4096, 100): 409_600, (4096, 150): 614_400,
}  # fmt: skip


@pytest.mark.parametrize(("width", "length"), sorted(LESTER_TABLE_4))
def test_prompt_matches_lester_table_4(width, length):
    assert count_params(prompts.Prompt(length), width) == LESTER_TABLE_4[(width, length)]


@pytest.mark.parametrize(("width", "expected"), [(1024, 11_240), (512, 6_120)])
def test_dpt_matches_paper(width, expected):
    # DPT section 3.1 / Figure 1: e*b + b*c with c = 100, b = 10 (T5-Large 11.2K, Small 6K).
    assert count_params(prompts.DecomposedPrompt(100, bottleneck=10), width) == expected


def test_residual_prompt_matches_dpt_table_1():
    # DPT Table 1 / Figure 1: residual PT on T5-Large with 100 tokens and bottleneck 400 has 925K.
    assert count_params(prompts.ResidualPrompt(100, bottleneck=400), 1024) == 925_072


def test_rank_probe_trains_only_the_diagonal():
    # Sigma [e, c] has min(e, c) diagonal entries; U and V are not parameters.
    assert count_params(prompts.RankProbePrompt(100), 768) == 100
    assert count_params(prompts.RankProbePrompt(100), 64) == 64
    trainable = prompts.RankProbePrompt(100, trainable_bases=True)
    assert count_params(trainable, 64) == 64 + 64 * 64 + 64 * 100


def _glove(input_tokens, embedded_inputs):
    del embedded_inputs
    return jnp.zeros((input_tokens.shape[0], 300))


# IDPG appendix A.1.2, RoBERTa-Large (H = 1024, 24 layers), prompt length t = 5.
IDPG_CASES = {
    "S-IDPG-DNN": (dict(hidden_dim=256), 1_578_240),
    "S-IDPG-PHM": (dict(hidden_dim=256, layer="phm", phm_rank=16), 107_776),
    "M-IDPG-PHM": (
        dict(hidden_dim=16, layer="phm", phm_rank=16, multi_layer=True, layer_input="previous"),
        137_232,
    ),
    "M-IDPG-DNN": (dict(hidden_dim=16, multi_layer=True, layer_input="previous"), 221_200),
    "M-IDPG-PHM-GloVe": (
        dict(
            hidden_dim=16, layer="phm", phm_rank=4, multi_layer=True, sentence_dim=300,
            sentence_encoder=_glove,
        ),
        144_704,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(IDPG_CASES))
def test_idpg_matches_appendix_a12(name):
    kwargs, expected = IDPG_CASES[name]
    if kwargs.get("multi_layer"):
        kwargs = dict(kwargs, num_layers=24)
    assert count_params(prompts.InstancePrompt(5, **kwargs), 1024, num_layers=24) == expected


def test_idpg_sharing_versions():
    # Section 4.5.3: S shares W and b, M shares W with per-layer b, L has a generator per layer.
    h, p, m, layers = 64, 5, 8, 4
    generator = h * m + m + m * p * h
    base = dict(hidden_dim=m, multi_layer=True, num_layers=layers)
    count = lambda s: count_params(prompts.InstancePrompt(p, sharing=s, **base), h, layers)
    assert count("S") == generator + p * h
    assert count("M") == generator + layers * p * h
    assert count("L") == layers * (generator + p * h)


def test_deep_prompt_matches_ptuning_v2_count():
    # IDPG Table 2 / A.1.2: P-tuning v2, t = 5, 24 layers: 5 * 24 * 1024.
    assert count_params(prompts.DeepPrompt(5, num_layers=24), 1024, num_layers=24) == 122_880


@pytest.mark.parametrize(
    ("hypernetwork", "expected"),
    [
        # Equation 2: W [nd, k], b [nd] plus the task table [tasks, k].
        ("linear", 3 * 64 + 64 * 20 * 512 + 20 * 512),
        # Equation 3: C [nd, r], F [r, k], b [nd].
        ("low_rank", 3 * 64 + 20 * 512 * 8 + 8 * 64 + 20 * 512),
        # Equation 4: W1 [h, k], b1 [h], W2 [nd, h], b2 [nd].
        ("mlp", 3 * 64 + 128 * 64 + 128 + 20 * 512 * 128 + 20 * 512),
    ],
)
def test_structured_matches_equations(hypernetwork, expected):
    module = prompts.StructuredPrompt(
        20, num_tasks=3, task_dim=64, hypernetwork=hypernetwork, rank=8, hidden_dim=128
    )
    assert count_params(module, 512) == expected


def _attempt(num_tasks: int = 1) -> nn.Module:
    # Six frozen source prompts as in the paper (MNLI, QNLI, QQP, SST-2, SQuAD, ReCoRD), P = 100.
    sources = lambda: np.zeros((6, 100, 768), np.float32)  # noqa: E731
    return prompts.AttemptPrompt(100, sources, rank=100, num_tasks=num_tasks)


def test_attempt_matches_the_papers_232k_per_task():
    # ATTEMPT (Asai et al., 2022) at T5-base (H = 768): target prompt P*H plus the attention
    # network W_down [H, r], W_up [r, H] and its layer norm (2*H), r = 100 (the authors' code):
    # 76,800 + 153,600 + 1,536 = 231,936, the paper's "232K" per target task. The six frozen
    # source prompts (460,800 values) are not parameters.
    assert count_params(_attempt(), 768) == 100 * 768 + 2 * 768 * 100 + 2 * 768 == 231_936
    assert round(count_params(_attempt(), 768), -3) == 232_000


def test_multi_task_attempt_shares_the_attention_network():
    # Multi-task ATTEMPT: one target prompt per task, one attention network for all N tasks.
    single = count_params(_attempt(), 768)
    assert count_params(_attempt(num_tasks=8), 768) == single + 7 * 100 * 768
