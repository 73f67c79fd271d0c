"""Instance-dependent prompt generation (IDPG, Wu et al., 2022).

A light generator G maps a sentence representation M(x) [D] to the prompt (section 3.1):
    prompt(x) = M(up(act(down(M(x))))) + b_up,   down: D -> m,  up: m -> P*H,
so the up-projection's bias b_up [P, H] is the task prompt (with zero kernels IDPG is plain
prompt tuning). `layer="phm"` replaces both projections by PHM layers (section 3.2.1); a single
set of PHM rules A_i is shared by the two layers in single-layer IDPG and each layer has its own in
M-IDPG (this is what reproduces the parameter counts of appendix A.1.2).

M-IDPG (section 3.2.2, 4.5.3) inserts a generated prompt before every encoder layer. Sharing:
"S" one generator and one b_up for all layers; "M" one generator, b_up per layer; "L" a whole
generator per layer. The generator input is M(x) at every layer ("first") or, for layers i >= 1,
the mean of layer i-1's outputs over real input positions ("previous").

Letters: B batch, T input length, P prompt length, H model dim, D sentence-representation dim,
m generator hidden size, n PHM rank, L encoder layers.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.phm import PHMDense, check_divides, rule_init, rules_param
from prompt_tuning.prompts.prompt import PROMPT_AXES, masked_mean

SentenceEncoder = str | Callable[[jax.Array, jax.Array], jax.Array]
LAYER_AXES = ("prompt_layers", *PROMPT_AXES)


class Generator(nn.Module):
    """G: [B, D] -> [B, P, H] without the output bias (the task prompt lives in InstancePrompt).

    Parameters: dense: `down/kernel` [D, m], `down/bias` [m], `up_kernel` [m, P, H];
    phm: `down/{factors [n, D/n, m/n], bias [m]}`, `up/factors` [n, m/n, P*H/n], and either
    `rules` [n, n, n] (shared) or `down/rules` and `up/rules`.

    Attributes:
      hidden_dim: m.
      layer: "dense" or "phm".
      phm_rank: n.
      share_rules: one set of PHM rules for both layers.
      activation: the nonlinearity between the projections.
    """

    hidden_dim: int
    layer: str = "dense"
    phm_rank: int = 16
    share_rules: bool = True
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, inputs: jax.Array, length: int, width: int) -> jax.Array:
        """Maps sentence representations [B, D] to prompts [B, P, H] (no output bias)."""
        if self.layer == "dense":
            hidden = nn.Dense(
                self.hidden_dim,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), ("prompt_sentence", "prompt_hidden")
                ),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("prompt_hidden",)),
                name="down",
            )(inputs)  # [B, m]
            up = self.param(
                "up_kernel",
                nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                    ("prompt_hidden", *PROMPT_AXES),
                ),
                (self.hidden_dim, length, width),
            )
            return jnp.einsum("bm,mph->bph", self.activation(hidden), up)  # [B, P, H]
        if self.layer != "phm":
            raise ValueError(f"Unknown IDPG generator layer {self.layer!r}; use 'dense' or 'phm'.")
        n = self.phm_rank
        check_divides(n, sentence_dim=inputs.shape[-1], hidden_dim=self.hidden_dim)
        check_divides(n, prompt_length_times_width=length * width)
        rules = rules_param(self, "rules", n, rule_init) if self.share_rules else None
        hidden = PHMDense(
            self.hidden_dim, n, factor_axes=("prompt_sentence", "prompt_hidden"), name="down"
        )(inputs, rules)  # [B, m]
        flat = PHMDense(
            length * width,
            n,
            use_bias=False,
            factor_axes=("prompt_hidden", "prompt_flat"),
            name="up",
        )(self.activation(hidden), rules)  # [B, P*H]
        return flat.reshape(flat.shape[0], length, width)  # [B, P, H]


class InstancePrompt(nn.Module):
    """IDPG: a prompt generated per example from its sentence representation.

    Parameters: `prompt` [P, H] (the up-projection bias, i.e. the task prompt; [L, P, H] for
    multi-layer sharing "M" and "L") and generator weights under `generator` (`generator_i`,
    i < L, for sharing "L"); see `Generator`.

    Attributes:
      length: P (IDPG uses 5).
      hidden_dim: m (IDPG: 256 single-layer, 16 multi-layer).
      layer: "dense" or "phm".
      phm_rank: n; must divide D, m and P*H (IDPG: 16; 4 with 300-d GloVe inputs).
      sentence_encoder: "embeddings" (mean of the frozen input embeddings over real tokens),
        "encoder" (mean of the frozen encoder's output; sets `needs_encoder_output`), or a
        callable `(input_tokens [B, T], embedded_inputs [B, T, H]) -> [B, D]`, e.g. a lookup of
        frozen GloVe vectors (IDPG section 4.5.1). Its output is never trained through.
      sentence_dim: D, the sentence-representation width; None means H. Only a callable
        sentence encoder can produce D != H (GloVe: 300).
      multi_layer: M-IDPG: a prompt before every encoder layer (`per_layer`).
      num_layers: L, number of encoder layers (multi_layer only); None inside
        `t5.EncoderDecoder` takes the model's `num_encoder_layers`.
      sharing: "S", "M" or "L" (multi-layer only).
      layer_input: "first" (M(x) at every layer) or "previous" (pooled previous layer output).
      share_phm_rules: one set of PHM rules for both generator layers; None means the paper's
        choice (shared for single-layer, separate for multi-layer).
      prompt_init: initializer of the task prompt (the up-projection bias) [P, H].
      activation: generator nonlinearity.
      dtype: dtype of the returned prompt.
    """

    length: int
    hidden_dim: int
    layer: str = "dense"
    phm_rank: int = 16
    sentence_encoder: SentenceEncoder = "embeddings"
    sentence_dim: int | None = None
    multi_layer: bool = False
    num_layers: int | None = None
    sharing: str = "M"
    layer_input: str = "first"
    share_phm_rules: bool | None = None
    prompt_init: Callable[..., jax.Array] = initializers.random_uniform(0.5)
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    dtype: Any = jnp.float32

    @property
    def per_layer(self) -> bool:
        """Whether the encoder must call `layer_prompt` before every layer i >= 1."""
        return self.multi_layer

    @property
    def needs_encoder_output(self) -> bool:
        """Whether `__call__` needs the frozen encoder's output without prompt."""
        return isinstance(self.sentence_encoder, str) and self.sentence_encoder == "encoder"

    def __call__(
        self,
        input_tokens: jax.Array,
        embedded_inputs: jax.Array,
        task_ids: jax.Array | None = None,
        encoder_output: jax.Array | None = None,
    ) -> jax.Array:
        """Generates the (layer-0) prompt of each example.

        Args:
          input_tokens: [B, T] int token ids (0 is padding).
          embedded_inputs: [B, T, H] embedded inputs.
          task_ids: unused.
          encoder_output: [B, T, H] frozen encoder output; required with
            sentence_encoder="encoder".

        Returns:
          [B, P, H] prompt.
        """
        del task_ids
        sentence = jax.lax.stop_gradient(
            self._sentence(input_tokens, embedded_inputs, encoder_output)
        )  # [B, D]
        # Kept for `layer_prompt` with layer_input="first" in the same apply (same bound module).
        object.__setattr__(self, "_first_input", sentence)
        return self._generate(0, sentence, embedded_inputs.shape[-1])

    def layer_prompt(
        self,
        layer_index: int,
        input_tokens: jax.Array,
        hidden: jax.Array,
        task_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Generates the prompt inserted before encoder layer `layer_index` >= 1.

        Args:
          layer_index: i, 1 <= i < L.
          input_tokens: [B, T] int token ids (0 is padding).
          hidden: [B, P+T, H] input of layer i (output of layer i-1).
          task_ids: unused.

        Returns:
          [B, P, H] prompt replacing hidden[:, :P].

        Raises:
          RuntimeError: layer_input="first" but `__call__` was not called first in this apply.
        """
        del task_ids
        if self.layer_input == "previous":
            inputs = masked_mean(hidden[:, self.length :], input_tokens)  # [B, H]
        else:
            inputs = getattr(self, "_first_input", None)
            if inputs is None:
                raise RuntimeError(
                    "InstancePrompt.layer_prompt with layer_input='first' needs the sentence "
                    "representation from __call__ in the same apply; call the prompt first."
                )
        return self._generate(layer_index, inputs, hidden.shape[-1])

    @nn.compact
    def _generate(self, layer_index: int, inputs: jax.Array, width: int) -> jax.Array:
        """Generator output plus the task prompt of layer `layer_index` -> [B, P, H]."""
        self._check_config()
        share = (not self.multi_layer) if self.share_phm_rules is None else self.share_phm_rules
        per_layer_generator = self.multi_layer and self.sharing == "L"
        generator = Generator(
            self.hidden_dim,
            self.layer,
            self.phm_rank,
            share,
            self.activation,
            name=f"generator_{layer_index}" if per_layer_generator else "generator",
        )
        if self.multi_layer and self.sharing in ("M", "L"):
            bias = self.param(
                "prompt",
                nn.with_logical_partitioning(initializers.per_layer(self.prompt_init), LAYER_AXES),
                (self.num_layers, self.length, width),
            )[layer_index]  # [P, H]
        else:
            bias = self.param(
                "prompt",
                nn.with_logical_partitioning(self.prompt_init, PROMPT_AXES),
                (self.length, width),
            )
        prompt = generator(inputs, self.length, width) + bias  # [B, P, H]
        return prompt.astype(self.dtype)

    def _sentence(self, input_tokens, embedded_inputs, encoder_output) -> jax.Array:
        """M(x) [B, D] from the configured sentence encoder."""
        if callable(self.sentence_encoder):
            sentence = self.sentence_encoder(input_tokens, embedded_inputs)
        elif self.sentence_encoder == "embeddings":
            sentence = masked_mean(embedded_inputs, input_tokens)
        elif encoder_output is None:
            raise ValueError(
                "sentence_encoder='encoder' needs encoder_output=[B, T, H]; the encoder passes it "
                "when the prompt's needs_encoder_output is True."
            )
        else:
            sentence = masked_mean(encoder_output, input_tokens)
        expected = self.sentence_dim or embedded_inputs.shape[-1]
        if sentence.shape[-1] != expected:
            raise ValueError(
                f"The sentence representation has width {sentence.shape[-1]} but sentence_dim is "
                f"{expected}; set sentence_dim to the encoder's output width."
            )
        return sentence

    def _check_config(self) -> None:
        """Raises a ValueError for inconsistent settings."""
        encoders = ("embeddings", "encoder")
        if not callable(self.sentence_encoder) and self.sentence_encoder not in encoders:
            raise ValueError(
                f"Unknown sentence_encoder {self.sentence_encoder!r}; use one of {encoders} or "
                "a callable."
            )
        if not self.multi_layer:
            return
        if not self.num_layers:
            raise ValueError(
                "multi_layer=True needs num_layers: bind it to NUM_ENCODER_LAYERS, or use the "
                "prompt inside t5.EncoderDecoder, which sets it from the model's config."
            )
        if self.sharing not in ("S", "M", "L"):
            raise ValueError(f"Unknown sharing {self.sharing!r}; use 'S', 'M' or 'L'.")
        if self.layer_input not in ("first", "previous"):
            raise ValueError(
                f"Unknown layer_input {self.layer_input!r}; use 'first' or 'previous'."
            )
