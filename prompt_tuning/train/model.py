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

from prompt_tuning.prompts import bank as bank_lib
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
      distillation: an optional `distillation.PromptDistillation` (MPT's source stage): the loss
        adds its logits KL and hidden-state MSE against the frozen model with each task's
        teacher prompt; None: the plain loss.
    """

    def __init__(
        self,
        module: nn.Module,
        loss_normalizing_factor: float | str | None = None,
        z_loss: float = 1e-4,
        label_smoothing: float = 0.0,
        distillation: Any = None,
    ):
        self.module = module
        self.loss_normalizing_factor = loss_normalizing_factor
        self.z_loss = z_loss
        self.label_smoothing = label_smoothing
        self.distillation = distillation
        self._teachers = None if distillation is None else distillation.teacher_table()
        if self._teachers is not None and self.num_task_ids not in (None, len(self._teachers)):
            raise ValueError(
                f"TEACHER_PROMPTS hold {len(self._teachers)} prompts but the prompt has "
                f"{self.num_task_ids} tasks (NUM_TASKS): give one teacher per task id."
            )

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
        if self.distillation is not None:
            return self._distillation_loss(params, batch, dropout_rng)
        logits = self.logits(params, batch, dropout_rng)  # [B, S, V]
        return self._task_loss(logits, batch)

    def _task_loss(self, logits: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        return losses.weighted_loss(
            logits,
            batch["decoder_target_tokens"],
            batch.get("decoder_loss_weights"),
            z_loss=self.z_loss,
            label_smoothing=self.label_smoothing,
            loss_normalizing_factor=self.loss_normalizing_factor,
        )

    def encoded_and_logits(
        self,
        params: Params,
        batch: Batch,
        dropout_rng: jax.Array | None = None,
        module: nn.Module | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`(encoded [B, P+T, H], encoder_mask [B, P+T], logits [B, S, V])` in one pass."""
        module = self.module if module is None else module
        dropout = dropout_rng is not None

        def run(m: nn.Module) -> tuple[jax.Array, jax.Array, jax.Array]:
            encoded, mask = m.encode(batch["encoder_input_tokens"], batch.get("task_ids"), dropout)
            logits = m.decode(
                encoded,
                mask,
                batch["decoder_input_tokens"],
                batch["decoder_target_tokens"],
                dropout,
            )
            return encoded, mask, logits

        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        return module.apply({"params": params}, method=run, rngs=rngs)

    def _distillation_loss(
        self, params: Params, batch: Batch, dropout_rng: jax.Array | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """CE + λ_KL·KL(teacher ‖ student) + λ_MSE·MSE(encoder outputs at the input positions).

        The teacher is the frozen model with `PromptBank` of the teacher prompts (constants, no
        dropout): task id k's example uses teacher k. Aux adds `distill_kl` and `distill_mse`.
        """
        config = self.distillation
        encoded, _, logits = self.encoded_and_logits(params, batch, dropout_rng)
        teachers = jnp.asarray(self._teachers)  # [N, P_t, H]
        teacher_module = self.module.clone(
            prompt=bank_lib.PromptBank(num_prompts=teachers.shape[0], length=teachers.shape[1])
        )
        encoder = dict(params["encoder"], prompt={"prompt": teachers})
        teacher_params = dict(params, encoder=encoder)
        teacher_batch = dict(batch)
        if teacher_batch.get("task_ids") is None:
            teacher_batch["task_ids"] = jnp.zeros((batch["encoder_input_tokens"].shape[0],), int)
        t_encoded, _, t_logits = self.encoded_and_logits(
            teacher_params, teacher_batch, None, teacher_module
        )
        length = batch["encoder_input_tokens"].shape[1]
        targets = batch["decoder_target_tokens"]
        weights = batch.get("decoder_loss_weights")
        weights = (targets > 0) if weights is None else weights
        kl, mse = losses.distillation_terms(
            logits, t_logits, encoded[:, -length:], t_encoded[:, -length:], weights,
            batch["encoder_input_tokens"] > 0, config.temperature, self.loss_normalizing_factor,
        )  # fmt: skip
        loss, aux = self._task_loss(logits, batch)
        loss = loss + config.kl_weight * kl + config.hidden_weight * mse
        num_tokens = jnp.maximum(aux["num_tokens"], 1.0)
        aux = dict(
            aux, loss=loss, loss_per_nonpadding_target_token=loss / num_tokens,
            distill_kl=kl, distill_mse=mse,
        )  # fmt: skip
        return loss, aux

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
