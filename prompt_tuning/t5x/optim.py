"""Prompt-only training under T5X: which parameters train, and how the prompt axes are treated.

Used from gin (`gin_configs/t5x/models/prompt.gin`):

- `trainable_filter(regex)` is the `filter_fn` of the `flax.traverse_util.ModelParamTraversal`
  that T5X's `optimizers.MultiOptimizer` pairs with Adafactor: parameters whose "/"-joined path
  matches TRAINABLE_PARAMS_REGEX (`re.search`, as our trainer) are optimized, all others get no
  optimizer state (`None`) and keep their values;
- `logical_axis_rules()` adds the prompt axes (`prompts.PROMPT_LOGICAL_AXES`) to T5X's
  `standard_logical_axis_rules(additional_rules=...)`, replicated as in
  `prompt_tuning.parallel.partitioning`: prompts are small, and every model shard needs all of them;
- `factor_rules()` extends T5X's Adafactor `standard_logical_factor_rules` with the prompt axes,
  all NONE (Lester et al.'s rule `prompt: NONE`): a prompt's second moment is not factored and its
  update is clipped by the RMS of the whole array, as `optimizers.Adafactor` (`factoring`) does.
  T5X ignores factor rules for parameters of rank <= 2 and applies its size heuristic instead
  (a [P, H] prompt with P, H >= 128 would be factored), so gin_configs/t5x/models/prompt.gin
  also sets `Adafactor.factored = False`: then T5X and our trainer update every prompt alike
  (tested for every gin_configs/prompts/ file);
- `ScaledLearningRate(optimizer, scale)` wraps a T5X optimizer so that its parameters train at
  `scale` times the rate T5X's trainer passes (T5X gives every sub-optimizer of a
  `MultiOptimizer` the same rate): DePT's low-rank pair (gin_configs/t5x/models/dept.gin).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from prompt_tuning.prompts import PROMPT_LOGICAL_AXES
from prompt_tuning.train.optimizers import DEFAULT_TRAINABLE_PARAMS_REGEX


def trainable_filter(
    regex: str = DEFAULT_TRAINABLE_PARAMS_REGEX,
) -> Callable[[str, Any], bool]:
    """A `ModelParamTraversal` filter: True for parameters whose path matches `regex`.

    Args:
      regex: TRAINABLE_PARAMS_REGEX, searched in paths such as `encoder/prompt/prompt` (T5X's
        traversal passes `/encoder/prompt/prompt`; the leading "/" is dropped).

    Returns:
      `filter_fn(path, value) -> bool`.
    """
    pattern = re.compile(regex)

    def filter_fn(path: str, value: Any) -> bool:
        del value
        return bool(pattern.search(path.lstrip("/")))

    return filter_fn


def logical_axis_rules() -> tuple[tuple[str, None], ...]:
    """Rules mapping every prompt axis to no mesh axis (replicated), for T5X's partitioner."""
    return tuple((axis, None) for axis in PROMPT_LOGICAL_AXES)


def factor_rules(rules: Any = None) -> Any:
    """T5X's Adafactor `logical_factor_rules` plus the prompt axes (needs T5X).

    Args:
      rules: the rules to extend; default `t5x.adafactor.standard_logical_factor_rules()`.

    Returns:
      A frozen dict `axis name -> FactorDim`.
    """
    from flax.core import frozen_dict  # noqa: PLC0415
    from t5x import adafactor  # noqa: PLC0415

    rules = dict(adafactor.standard_logical_factor_rules() if rules is None else rules)
    rules.update(dict.fromkeys(PROMPT_LOGICAL_AXES, adafactor.FactorDim.NONE))
    return frozen_dict.freeze(rules)


class ScaledLearningRate:
    """A T5X `OptimizerDef` whose learning rate is `scale` times the one it is given.

    T5X's trainer overrides `learning_rate` of every sub-optimizer of a `MultiOptimizer` with the
    schedule's value; this wrapper multiplies it before delegating, so one group (DePT's low-rank
    pair) trains at its own rate, as `optimizers.adafactor(learning_rate_scales=...)` does in our
    trainer. Everything else (state, logical axes) is the wrapped optimizer's.

    Attributes:
      optimizer: the wrapped T5X optimizer (e.g. `t5x.adafactor.Adafactor`).
      scale: the rate multiplier.
    """

    def __init__(self, optimizer: Any, scale: float):
        self.optimizer = optimizer
        self.scale = float(scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def apply_gradient(self, hyper_params: Any, params: Any, state: Any, grads: Any) -> Any:
        """The wrapped optimizer's step at `scale * hyper_params.learning_rate`."""
        scaled = hyper_params.replace(learning_rate=hyper_params.learning_rate * self.scale)
        return self.optimizer.apply_gradient(scaled, params, state, grads)
