"""A transformers `config.json` <-> `T5Config`, for every T5 family transformers names.

Three `model_type`s share T5's layout (`hf_format.name_map`):

- `t5` (`T5ForConditionalGeneration`): original T5, T5 1.1, LM-adapted T5, Flan-T5, ByT5;
- `mt5` (`MT5ForConditionalGeneration`): mT5; the same network, other defaults;
- `umt5` (`UMT5ForConditionalGeneration`): UMT5; a relative position table in every layer's
  self-attention (`relative_attention_per_layer`).

Fields a `config.json` leaves out take the defaults of that model type's transformers config class
(`T5Config`, `MT5Config`, `UMT5Config`), which differ: T5 defaults to a ReLU MLP and tied
embeddings, mT5 to gated GELU and untied, UMT5 to gated GELU and tied. Anything else (another
model type, an activation our MLP does not have) is refused with the field and what is supported.

Output layer, three layouts (every model type scales tied logits by H**-0.5 in transformers 4):
- `tie_word_embeddings: false` -> untied `decoder/logits_dense` (T5 1.1, mT5, ByT5, Flan-T5, UMT5);
- tied, no `scale_decoder_outputs` or true: tied to `shared.weight`, scaled (original T5);
- transformers 5.x: `tie_word_embeddings: true, scale_decoder_outputs: false` -> tied, unscaled.
"""

from collections.abc import Mapping
from typing import Any

from prompt_tuning.t5.checkpoint_tree import CheckpointError
from prompt_tuning.t5.config import T5Config

# model_type -> the defaults of its transformers config class for fields config.json may omit.
_DEFAULTS = {
    "t5": {"feed_forward_proj": "relu", "tie_word_embeddings": True},
    "mt5": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    "umt5": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": True},
}
_ARCHITECTURES = {
    "t5": "T5ForConditionalGeneration",
    "mt5": "MT5ForConditionalGeneration",
    "umt5": "UMT5ForConditionalGeneration",
}
_SUPPORTED_MLPS = ("relu", "gated-gelu", "gated-relu")


def _activations(feed_forward_proj: str) -> tuple[str, ...]:
    """Our `mlp_activations` for transformers' `feed_forward_proj`.

    transformers' "gated-gelu" is the tanh GELU (`gelu_new`), as ours and T5X's; a plain "gelu"
    there is the exact (erf) GELU, which our MLP does not have, so it is refused.
    """
    if feed_forward_proj not in _SUPPORTED_MLPS:
        raise CheckpointError(
            f"Unsupported feed_forward_proj {feed_forward_proj!r} in config.json; supported: "
            f"{', '.join(map(repr, _SUPPORTED_MLPS))} (T5's ReLU MLP and T5 1.1's gated GELU)."
        )
    parts = feed_forward_proj.split("-")
    return (parts[-1], "linear") if parts[0] == "gated" else (parts[-1],)


def model_type(hf: Mapping[str, Any]) -> str:
    """The `model_type` of a `config.json` ("t5" when absent, as older files are).

    Raises:
      CheckpointError: a model type that is not a T5 encoder-decoder we can run.
    """
    kind = hf.get("model_type", "t5")
    if kind not in _DEFAULTS:
        raise CheckpointError(
            f"config.json has model_type={kind!r}; supported: {sorted(_DEFAULTS)} (T5, T5 1.1, "
            "Flan-T5 and ByT5 are 't5', mT5 'mt5', UMT5 'umt5')."
        )
    return kind


def config_from_hf(hf: Mapping[str, Any]) -> T5Config:
    """Builds a `T5Config` from the fields of a transformers `config.json`.

    Args:
      hf: the parsed `config.json` of a T5, mT5 or UMT5 model.

    Returns:
      The equivalent config (tying and tied-logit scaling as in the module docstring; UMT5 with
      `relative_attention_per_layer`).

    Raises:
      CheckpointError: a required field is missing, or the model type or MLP is unsupported.
    """
    kind = model_type(hf)
    defaults = _DEFAULTS[kind]
    if hf.get("is_encoder_decoder") is False:
        raise CheckpointError(
            "config.json has is_encoder_decoder=false; only encoder-decoder T5 models are "
            "supported."
        )
    try:
        tied = bool(hf.get("tie_word_embeddings", defaults["tie_word_embeddings"]))
        mlp = hf.get("feed_forward_proj", defaults["feed_forward_proj"])
        return T5Config(
            vocab_size=hf["vocab_size"],
            emb_dim=hf["d_model"],
            num_heads=hf["num_heads"],
            head_dim=hf["d_kv"],
            mlp_dim=hf["d_ff"],
            num_encoder_layers=hf["num_layers"],
            num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
            mlp_activations=_activations(mlp),
            dropout_rate=hf.get("dropout_rate", 0.1),
            logits_via_embedding=tied,
            scale_tied_logits=bool(hf.get("scale_decoder_outputs", True)),
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            relative_attention_per_layer=kind == "umt5",
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        )
    except KeyError as e:
        raise CheckpointError(
            f"config.json lacks the T5 field {e.args[0]!r}; is this a T5 model's config?"
        ) from e


def writes_tied(config: T5Config, transformers_version: int) -> bool:
    """Whether the written model ties its output layer to the embedding."""
    if transformers_version not in (4, 5):
        raise ValueError(f"transformers_version must be 4 or 5, got {transformers_version}.")
    if not config.logits_via_embedding:
        return False
    return transformers_version == 5 or config.scale_tied_logits


def config_to_hf(config: T5Config, transformers_version: int = 4) -> dict[str, Any]:
    """The transformers `config.json` fields for `config`.

    Args:
      config: the model configuration.
      transformers_version: 4 or 5; 5 adds `scale_decoder_outputs`. transformers 4 cannot
        express tied-but-unscaled logits, so such a model is written untied there (`lm_head` a
        copy of the embedding; the same function).

    Returns:
      A JSON-serialisable dict: `model_type` "umt5" for a table per layer, else "t5".
    """
    gated = len(config.mlp_activations) > 1
    activation = config.mlp_activations[0]
    tied = writes_tied(config, transformers_version)
    kind = "umt5" if config.relative_attention_per_layer else "t5"
    hf = {
        "architectures": [_ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_factor": 1.0,
        "feed_forward_proj": f"gated-{activation}" if gated else activation,
        "is_encoder_decoder": True,
        "tie_word_embeddings": tied,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "transformers_version": "4.57.0" if transformers_version == 4 else "5.0.0",
    }
    if kind == "umt5":
        hf["scalable_attention"] = True  # What UMT5's published config.json files state.
    if transformers_version >= 5:
        hf["scale_decoder_outputs"] = bool(tied and config.scale_tied_logits)
    return hf
