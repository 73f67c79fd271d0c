"""`PromptModel`: the frozen T5 + prompt network with T5X's loss, scoring and decoding.

Letters: B batch, T encoder input length, P prompt length, S decoder length, V vocabulary.

Batches are dicts from the encoder-decoder feature converter: `encoder_input_tokens [B, T]`,
`decoder_input_tokens [B, S]`, `decoder_target_tokens [B, S]`, `decoder_loss_weights [B, S]` and,
for multi-task mixtures, `task_ids [B]`. `params` is always the FULL nested parameter dict (frozen
and trainable merged, plain arrays, no `params` collection level).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts import prompt as prompt_lib
from prompt_tuning.t5 import decoding
from prompt_tuning.train import losses, optimizers

Batch = Mapping[str, Any]
Params = Mapping[str, Any]


class PromptModel:
    """Wraps `prompt_tuning.t5.network.EncoderDecoder` with loss, score and predict functions.

    Attributes:
      module: the linen `EncoderDecoder` (its `prompt` field holds the prompt module).
      loss_normalizing_factor: T5X's LOSS_NORMALIZING_FACTOR: None sums the token losses, a number
        divides the sum, or a T5X special factor such as "NUM_REAL_TARGET_TOKENS" (see `losses`).
      z_loss: z-loss coefficient (T5X default 1e-4).
      label_smoothing: label smoothing of the targets.
    """

    def __init__(
        self,
        module: nn.Module,
        loss_normalizing_factor: float | str | None = None,
        z_loss: float = 1e-4,
        label_smoothing: float = 0.0,
    ):
        self.module = module
        self.loss_normalizing_factor = loss_normalizing_factor
        self.z_loss = z_loss
        self.label_smoothing = label_smoothing

    @property
    def config(self) -> Any:
        """The module's `T5Config`."""
        return self.module.config

    @property
    def prompt(self) -> nn.Module | None:
        """The prompt module (None for a plain T5)."""
        return getattr(self.module, "prompt", None)

    @property
    def num_task_ids(self) -> int | None:
        """How many task ids the prompt has rows for (None: it reads no task ids)."""
        return getattr(self.prompt, "num_task_ids", None)

    def check_task_ids(self, batch: Batch, where: str = "the batch") -> None:
        """Checks a host batch's `task_ids` against the prompt before it enters a jitted step.

        Inside `jit` an out-of-range index cannot raise, so training, evaluation and inference
        call this on the numpy batch they are about to place.

        Args:
          batch: host (numpy) features; without `task_ids` nothing is checked.
          where: what the batch comes from, for the message (e.g. "task 'taskless_glue_rte_v002'").

        Raises:
          ValueError: naming the id, `where` and the prompt's number of task ids.
        """
        count = self.num_task_ids
        if count is not None and batch.get("task_ids") is not None:
            prompt_lib.check_task_ids(np.asarray(batch["task_ids"]), count, where)

    def _dummy_batch(self, input_length: int, target_length: int, batch_size: int = 1) -> Batch:
        """An all-ones batch of the given shapes, for initialization and shape inference."""
        inputs = jnp.ones((batch_size, input_length), jnp.int32)
        targets = jnp.ones((batch_size, target_length), jnp.int32)
        return {
            "encoder_input_tokens": inputs,
            "decoder_input_tokens": targets,
            "decoder_target_tokens": targets,
            "task_ids": jnp.zeros((batch_size,), jnp.int32),
        }

    def init_boxed(self, rng: jax.Array, input_length: int, target_length: int) -> Any:
        """Initializes all parameters, keeping flax's `LogicallyPartitioned` boxes.

        Args:
          rng: PRNG key (RANDOM_SEED).
          input_length: T of the dummy batch (any positive length).
          target_length: S of the dummy batch.

        Returns:
          The boxed parameter tree (use `nn.unbox` for arrays, `nn.get_partition_spec` for axes).
        """
        batch = self._dummy_batch(input_length, target_length)
        variables = self.module.init(
            {"params": rng, "dropout": rng},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            task_ids=batch["task_ids"],
            enable_dropout=False,
        )
        return variables["params"]

    def param_logical_axes(self) -> dict[str, tuple[str | None, ...] | None]:
        """Every parameter's logical axis names by "/"-joined path, e.g.
        `{"encoder/prompt/prompt": ("prompt", "prompt_embed"), ...}` (shapes only, no compute)."""
        boxed = jax.eval_shape(lambda rng: self.init_boxed(rng, 1, 1), jax.random.key(0))
        return optimizers.logical_axes(boxed)

    def logits(
        self, params: Params, batch: Batch, dropout_rng: jax.Array | None = None
    ) -> jax.Array:
        """Teacher-forced float32 logits [B, S, V]; dropout on when `dropout_rng` is given."""
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        return self.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            task_ids=batch.get("task_ids"),
            enable_dropout=dropout_rng is not None,
            rngs=rngs,
        )

    def loss_fn(
        self, params: Params, batch: Batch, dropout_rng: jax.Array | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """T5X's loss: token cross-entropy + z-loss, normalized (see `losses.weighted_loss`).

        Args:
          params: full parameter dict.
          batch: a converted batch (see module docstring).
          dropout_rng: PRNG key for dropout, or None for a deterministic pass.

        Returns:
          (loss scalar, aux) with `loss`, `z_loss`, `cross_ent_loss`, `accuracy`, `num_tokens`.
        """
        logits = self.logits(params, batch, dropout_rng)  # [B, S, V]
        return losses.weighted_loss(
            logits,
            batch["decoder_target_tokens"],
            batch.get("decoder_loss_weights"),
            z_loss=self.z_loss,
            label_smoothing=self.label_smoothing,
            loss_normalizing_factor=self.loss_normalizing_factor,
        )

    def score_batch(self, params: Params, batch: Batch) -> jax.Array:
        """Sum of the target tokens' log-likelihoods per example -> [B] (no dropout).

        Args:
          params: full parameter dict.
          batch: a converted batch; positions with `decoder_target_tokens == 0` (or zero loss
            weight, when `decoder_loss_weights` is present) do not count.

        Returns:
          [B] float32 log-likelihoods.
        """

        targets = batch["decoder_target_tokens"]
        weights = batch.get("decoder_loss_weights")
        if weights is not None:
            targets = jnp.where(weights > 0, targets, 0)  # unweighted positions are not scored
        return decoding.score(
            self.module,
            params,
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            targets,
            task_ids=batch.get("task_ids"),
        )

    def predict_batch(
        self,
        params: Params,
        batch: Batch,
        method: str = "greedy",
        beam_size: int = 4,
        max_decode_length: int | None = None,
    ) -> jax.Array:
        """Decodes outputs for `encoder_input_tokens` -> tokens [B, S] (0-padded after EOS).

        Args:
          params: full parameter dict.
          batch: needs `encoder_input_tokens` [B, T] (and `task_ids` for multi-task prompts);
            `decoder_target_tokens` [B, S] gives S when `max_decode_length` is None.
          method: "greedy" or "beam".
          beam_size: beams for "beam".
          max_decode_length: S; default the batch's target length.

        Returns:
          [B, S] int32 tokens (the best beam for "beam").

        Raises:
          ValueError: unknown `method`, or no length to decode to.
        """

        if max_decode_length is None:
            if "decoder_target_tokens" not in batch:
                raise ValueError("predict_batch needs max_decode_length or decoder_target_tokens.")
            max_decode_length = batch["decoder_target_tokens"].shape[1]
        inputs, task_ids = batch["encoder_input_tokens"], batch.get("task_ids")
        if method == "greedy":
            return decoding.greedy_decode(
                self.module, params, inputs, max_decode_length, task_ids=task_ids
            )
        if method == "beam":
            tokens, _ = decoding.beam_search(
                self.module, params, inputs, max_decode_length, beam_size, task_ids=task_ids
            )
            return tokens[:, 0]  # the best beam: [B, W, S] -> [B, S]
        raise ValueError(f"Unknown decode method {method!r}; use 'greedy' or 'beam'.")
