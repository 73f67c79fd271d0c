"""Many prompts, one frozen model: prompt ensembles and mixed-task batches in one forward pass.

Prompt ensembling (Lester et al., 2021, section 6): N prompts tuned for one task act as N models.
Instead of N forward passes, the batch is replicated N times and copy i uses prompt i, through a
`PromptBank` holding the N prompts and `task_ids` = the copy index. The ensemble's prediction is
the majority vote of the N predictions (decoded sequences, or rank-classification choices).

Mixed-task batches use the same bank with each example's own `task_ids`: `bank_params` puts one
tuned prompt per task into the bank, and any `PromptModel` predictor then serves all tasks at once.

Letters: N prompts, B batch, T input length, S target length, C labels, P prompt length,
H model dim.
"""

import collections
import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from prompt_tuning.parallel import partitioning
from prompt_tuning.predict.predictor import Batch, Predictor, mesh_of
from prompt_tuning.prompts.bank import PromptBank

PROMPT_PATH = ("encoder", "prompt", "prompt")


def stack_prompts(prompts: Sequence[np.ndarray]) -> np.ndarray:
    """Stacks N prompts `[P, H]` into a bank table `[N, P, H]`.

    Raises:
      ValueError: no prompts, or prompts of different shapes (each shape is named).
    """
    if not prompts:
        raise ValueError("Give at least one prompt to build a prompt bank.")
    shapes = [tuple(np.shape(p)) for p in prompts]
    if len(set(shapes)) != 1 or len(shapes[0]) != 2:
        raise ValueError(
            f"Every prompt of a bank must have the same shape [P, H]; got shapes {shapes}."
        )
    return np.stack([np.asarray(p) for p in prompts])  # [N, P, H]


def bank_params(params: Any, prompts: Sequence[np.ndarray] | np.ndarray) -> dict:
    """The full params of a `PromptBank` model: the frozen weights plus the N prompts.

    Args:
      params: a full parameter tree (frozen weights; any existing prompt is replaced).
      prompts: N prompts `[P, H]` (a list or a `[N, P, H]` array).

    Returns:
      A new tree whose `encoder/prompt/prompt` is `[N, P, H]` (replicated on the params' mesh
      when they live on one); other leaves are shared.
    """
    table = np.asarray(prompts) if isinstance(prompts, np.ndarray) else stack_prompts(prompts)
    mesh = mesh_of(params)
    if mesh is not None:
        table = partitioning.replicate(table, mesh)
    out = dict(params)
    encoder = dict(out["encoder"])
    encoder["prompt"] = {"prompt": table}
    out["encoder"] = encoder
    return out


def bank_prompt(num_prompts: int, length: int) -> PromptBank:
    """The prompt of an N-prompt model: `EncoderDecoder(config, prompt=bank_prompt(N, P))`."""
    return PromptBank(num_prompts=num_prompts, length=length)


def replicate_batch(batch: Batch, num_copies: int) -> Batch:
    """Stacks N copies of a batch; copy i (rows `i*B .. i*B+B-1`) gets `task_ids = i`.

    Args:
      batch: model features `[B, ...]`; an existing `task_ids` is replaced.
      num_copies: N.

    Returns:
      Model features `[N*B, ...]` with `task_ids [N*B]`.
    """
    batch_size = batch["encoder_input_tokens"].shape[0]
    out = {
        k: np.concatenate([np.asarray(v)] * num_copies, axis=0)  # [N*B, ...]
        for k, v in batch.items()
        if k != "task_ids"
    }
    out["task_ids"] = np.repeat(np.arange(num_copies, dtype=np.int32), batch_size)  # [N*B]
    return out


def majority_vote(candidates: Sequence[Hashable]) -> int:
    """Index of the winning candidate: the most frequent; ties go to the earliest prompt."""
    counts = collections.Counter(candidates)
    best = max(counts.values())
    return next(i for i, c in enumerate(candidates) if counts[c] == best)


def trim_after_eos(tokens: np.ndarray, eos_id: int = 1) -> tuple[int, ...]:
    """Decoded tokens up to and including the first EOS (what detokenization reads)."""
    values = [int(t) for t in tokens]
    return tuple(values[: values.index(eos_id) + 1] if eos_id in values else values)


class PromptEnsemble:
    """N prompts of one task as one model: one forward pass over N copies, then majority votes.

    It returns every prompt's outputs (`member_predictions`, `member_scores`, `member_choices`:
    row i equals running prompt i alone) and, as a predictor (`predict`, `score`, `classify`),
    their vote, so `Evaluator(task, lengths, PromptEnsemble(...), batch_size)` evaluates the
    ensemble, `Evaluator.collect(..., members=True)` every prompt from the same pass, and
    `inference.predict_task` writes its predictions.
    """

    def __init__(
        self,
        model: Any,
        num_prompts: int,
        decode_method: str = "greedy",
        beam_size: int = 4,
        max_decode_length: int | None = None,
        eos_id: int = 1,
    ):
        """Wraps a bank model.

        Args:
          model: a `PromptModel` whose prompt is a `PromptBank` of `num_prompts` prompts (params
            from `bank_params`).
          num_prompts: N.
          decode_method: "greedy" or "beam".
          beam_size: beams for "beam".
          max_decode_length: decode at most this many tokens (None: the target length).
          eos_id: the vocabulary's EOS id (votes compare sequences up to EOS).
        """
        self.num_prompts = num_prompts
        self.eos_id = eos_id
        self.member = Predictor(model, decode_method, beam_size, max_decode_length)

    def member_predictions(self, params: Any, batch: Batch) -> np.ndarray:
        """Every prompt's decoded tokens `[N, B, S]`, from one pass over `[N*B]` rows."""
        tokens = self.member.predict(params, replicate_batch(batch, self.num_prompts))  # [N*B, S]
        return tokens.reshape(self.num_prompts, -1, tokens.shape[-1])  # [N, B, S]

    def member_scores(self, params: Any, batch: Batch) -> np.ndarray:
        """Every prompt's summed target log-likelihood `[N, B]`."""
        scores = self.member.score(params, replicate_batch(batch, self.num_prompts))  # [N*B]
        return scores.reshape(self.num_prompts, -1)  # [N, B]

    def member_choices(self, params: Any, batch: Batch, label_tokens: np.ndarray) -> np.ndarray:
        """Every prompt's rank-classification choice `[N, B]`."""
        replicated = replicate_batch(batch, self.num_prompts)
        scores = self.member.label_scores(params, replicated, label_tokens)  # [N*B, C]
        return np.argmax(scores, axis=1).reshape(self.num_prompts, -1)  # [N, B]

    def vote_predictions(self, tokens: np.ndarray) -> np.ndarray:
        """The majority over prompts of decoded sequences `[N, B, S]` (up to EOS) -> `[B, S]`."""
        winners = [
            majority_vote([trim_after_eos(tokens[i, b], self.eos_id) for i in range(len(tokens))])
            for b in range(tokens.shape[1])
        ]
        return np.stack([tokens[w, b] for b, w in enumerate(winners)])  # [B, S]

    @staticmethod
    def vote_choices(choices: np.ndarray) -> np.ndarray:
        """The majority over prompts of label choices `[N, B]` -> `[B]`."""
        return np.asarray(
            [choices[majority_vote(list(choices[:, b])), b] for b in range(choices.shape[1])]
        )

    def vote(self, outputs: Any) -> Any:
        """The ensemble's outputs from per-prompt ones: `evaluation.TaskOutputs` with a leading N
        axis (`Evaluator.collect(..., members=True)`) -> voted tokens and choices, mean scores."""
        each = lambda x, fn: None if x is None else fn(x)  # noqa: E731
        return dataclasses.replace(
            outputs,
            tokens=each(outputs.tokens, self.vote_predictions),
            scores=each(outputs.scores, lambda x: x.mean(axis=0)),
            choices=each(outputs.choices, self.vote_choices),
        )

    def predict(self, params: Any, batch: Batch) -> np.ndarray:
        """Majority vote over the N decoded sequences of each example -> tokens `[B, S]`."""
        return self.vote_predictions(self.member_predictions(params, batch))

    def score(self, params: Any, batch: Batch) -> np.ndarray:
        """Mean over the N prompts of the summed target log-likelihood `[B]`."""
        return self.member_scores(params, batch).mean(axis=0)  # [B]

    def classify(self, params: Any, batch: Batch, label_tokens: np.ndarray) -> np.ndarray:
        """Majority vote over the N rank-classification choices -> label index `[B]`."""
        return self.vote_choices(self.member_choices(params, batch, label_tokens))
