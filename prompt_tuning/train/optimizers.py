"""Prompt-only optimization: the trainable/frozen split of the parameters and the optimizers.

Freezing is one regular expression (`TRAINABLE_PARAMS_REGEX`, default `prompt`) matched with
`re.search` against each parameter's "/"-joined path (e.g. `encoder/prompt/prompt`). `split_params`
turns it into two subtrees; the train step differentiates only with respect to the trainable one
(the frozen one is closed over), so frozen weights get no gradient buffers and no optimizer state.

The default optimizer is Lester et al. (2021)'s: Adafactor with a constant learning rate of 0.3,
second-moment decay exponent 0.8, decoupled weight decay 1e-5, no parameter scaling, and T5X's
defaults otherwise (update clipping at RMS 1.0, epsilon 1e-30), with second moments factored as
their code's factor rules decide from each parameter's logical axes: never for prompt axes, as T5X
for the model's axes (`factoring`). Their Table 6 search space adds linear warmup and step decay.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from prompt_tuning.train import factoring

DEFAULT_TRAINABLE_PARAMS_REGEX = "prompt"
Params = Mapping[str, Any]


def path_name(path: tuple[Any, ...]) -> str:
    """Joins a jax key path (or a tuple of names) into "encoder/prompt/prompt"."""
    return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def trainable_mask(params: Params, regex: str = DEFAULT_TRAINABLE_PARAMS_REGEX) -> Any:
    """Marks the parameters whose path matches `regex` (`re.search`).

    Args:
      params: nested dict of parameters (arrays or shape structs).
      regex: the TRAINABLE_PARAMS_REGEX.

    Returns:
      A tree like `params` with a bool per leaf: True for trainable parameters.
    """
    pattern = re.compile(regex)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(pattern.search(path_name(path))), params
    )


def _select(params: Params, mask: Any, keep: bool) -> dict[str, Any]:
    """The nested-dict subtree of `params` whose mask equals `keep` (empty branches dropped)."""
    out = {}
    for name, value in params.items():
        if isinstance(value, Mapping):
            sub = _select(value, mask[name], keep)
            if sub:
                out[name] = sub
        elif mask[name] == keep:
            out[name] = value
    return out


def split_params(
    params: Params, regex: str = DEFAULT_TRAINABLE_PARAMS_REGEX, allow_empty: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits the model's parameters into (trainable, frozen) nested dicts by one regex.

    Args:
      params: the full nested parameter dict.
      regex: the TRAINABLE_PARAMS_REGEX.
      allow_empty: accept a regex that matches nothing (evaluating a model without a prompt).

    Returns:
      (trainable, frozen): disjoint nested dicts whose union is `params`.

    Raises:
      ValueError: the regex matches no parameter (unless `allow_empty`).
    """
    mask = trainable_mask(params, regex)
    trainable = _select(params, mask, True)
    if not trainable and not allow_empty:
        names = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        raise ValueError(
            f"TRAINABLE_PARAMS_REGEX {regex!r} matches no parameter, so nothing would train. "
            f"Parameter paths look like: {', '.join(names[:6])}."
        )
    return trainable, _select(params, mask, False)


def merge_params(trainable: Params, frozen: Params) -> dict[str, Any]:
    """Merges the two halves of `split_params` back into one nested dict (the full model)."""
    out = dict(frozen)
    for name, value in trainable.items():
        if isinstance(value, Mapping) and isinstance(out.get(name), Mapping):
            out[name] = merge_params(value, out[name])
        else:
            out[name] = value
    return out


def learning_rate_schedule(
    learning_rate: float = 0.3,
    warmup_steps: int = 0,
    decay_factor: float | None = None,
    steps_per_decay: int | None = None,
    step_offset: int = 0,
) -> optax.Schedule:
    """Lester et al.'s schedule family (Table 6): constant, optional warmup and step decay.

    lr(t) = learning_rate * min(1, t / warmup_steps) * decay_factor ** floor(t / steps_per_decay),
    with t = max(0, step - step_offset) and `step` the training step, which starts at the initial
    checkpoint's step (`start_at_step`), as T5X's `create_learning_rate_scheduler`: fine-tuning
    from `checkpoint_1100000` warms up only with `step_offset = 1100000`.

    Args:
      learning_rate: the peak (constant) rate; the paper uses 0.3.
      warmup_steps: linear warmup length (0: off).
      decay_factor: multiplier applied every `steps_per_decay` steps (None: off).
      steps_per_decay: decay period (None: off).
      step_offset: the step the schedule counts from (T5X's `step_offset`).

    Returns:
      An optax schedule `step -> rate`.

    Raises:
      ValueError: only one of `decay_factor` and `steps_per_decay` was given, or a bad value.
    """
    if (decay_factor is None) != (steps_per_decay is None):
        raise ValueError("Give both decay_factor and steps_per_decay for step decay, or neither.")
    if warmup_steps < 0 or (steps_per_decay is not None and steps_per_decay <= 0):
        raise ValueError("warmup_steps must be >= 0 and steps_per_decay > 0.")

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.maximum(jnp.asarray(step, jnp.float32) - step_offset, 0.0)
        rate = jnp.asarray(learning_rate, jnp.float32)
        if warmup_steps:
            rate = rate * jnp.minimum(1.0, step / warmup_steps)
        if decay_factor is not None:
            rate = rate * decay_factor ** jnp.floor(step / steps_per_decay)
        return rate

    return schedule


def scale_by_path(scales: Mapping[str, float] | None) -> optax.GradientTransformation:
    """Multiplies the updates of parameters whose "/"-joined path matches a regex by its scale.

    Placed right after the learning-rate schedule it gives those parameters the rate
    `scale * lr_t` (a parameter group's own rate, as DePT trains its low-rank pair). The first
    matching regex (`re.search`) wins; other parameters are unchanged. Stateless.

    Args:
      scales: `{regex: scale}` (None or empty: the identity).

    Returns:
      An optax transformation; its `init` raises ValueError when a regex matches no parameter
      (a misspelt name would otherwise train everything at one rate silently).
    """
    patterns = [(re.compile(regex), float(scale)) for regex, scale in dict(scales or {}).items()]

    def scale_of(path: Any) -> float:
        name = path_name(path)
        return next((scale for pattern, scale in patterns if pattern.search(name)), 1.0)

    def init(params: Any) -> optax.EmptyState:
        names = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        for pattern, _ in patterns:
            if not any(pattern.search(name) for name in names):
                raise ValueError(
                    f"learning_rate_scales: {pattern.pattern!r} matches no trainable parameter "
                    f"(they are {names}); fix the regex (e.g. DePT's 'prompt/low_rank_')."
                )
        return optax.EmptyState()

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        if not patterns:
            return updates, state
        scaled = jax.tree_util.tree_map_with_path(lambda p, u: u * scale_of(p), updates)
        return scaled, state

    return optax.GradientTransformation(init, update)


class ScheduleState(NamedTuple):
    """State of `scale_by_logged_schedule`: updates applied so far and the rate last used."""

    count: jax.Array
    learning_rate: jax.Array


def scale_by_logged_schedule(schedule: optax.Schedule) -> optax.GradientTransformation:
    """Multiplies updates by `schedule(count)` and keeps that rate in the state (for logging).

    Args:
      schedule: step -> learning rate.

    Returns:
      An optax transformation; its state's `learning_rate` field is the rate of the last update.
    """

    def init(params: Any) -> ScheduleState:
        del params
        return ScheduleState(jnp.zeros([], jnp.int32), jnp.asarray(schedule(0), jnp.float32))

    def update(updates: Any, state: ScheduleState, params: Any = None) -> tuple[Any, ScheduleState]:
        del params
        rate = jnp.asarray(schedule(state.count), jnp.float32)
        updates = jax.tree.map(lambda u: (u * rate).astype(u.dtype), updates)
        return updates, ScheduleState(optax.safe_increment(state.count), rate)

    return optax.GradientTransformation(init, update)


def current_learning_rate(opt_state: Any) -> jax.Array | None:
    """The rate of the last update of an optimizer built here (None if it has no schedule state)."""
    for state in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, ScheduleState)
    ):
        if isinstance(state, ScheduleState):
            return state.learning_rate
    return None


def logical_axes(boxed_params: Any) -> dict[str, tuple[str | None, ...] | None]:
    """The logical axis names of every parameter, by "/"-joined path (None: unannotated).

    Args:
      boxed_params: parameters (or `jax.eval_shape` structs) with `nn.LogicallyPartitioned`
        boxes, as `PromptModel.init_boxed` returns them.
    """
    import flax.linen as nn  # noqa: PLC0415

    boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    leaves = jax.tree_util.tree_flatten_with_path(boxed_params, is_leaf=boxed)[0]
    return {path_name(p): tuple(x.names) if boxed(x) else None for p, x in leaves}


@dataclasses.dataclass(frozen=True, eq=False)
class Adafactor:
    """Adafactor as T5X applies it in Lester et al. (2021); an optax transformation (init/update).

    Per parameter: v_t = d_t v_{t-1} + (1 - d_t)(g^2 + epsilon) with d_t = 1 - (t + 1)^-decay_rate
    (factored into row/column statistics as `factoring.factor_dims` decides from the logical
    axes: prompt axes never), u = g / sqrt(v_t), u /= max(1, RMS(u) / clipping_threshold), and
    p <- p - lr_t * u - weight_decay_rate * p (T5X's decay is not multiplied by the rate).

    The logical axes come from the model (`with_param_axes(PromptModel.param_logical_axes())`,
    which the trainer calls, as T5X's `set_param_axes`); before that every parameter falls back to
    T5X's size heuristic. Build it with `adafactor(...)` (gin: `optimizers.adafactor`).

    Attributes: see `adafactor`; `param_axes` maps "/"-joined parameter paths to logical axes.
    """

    learning_rate: Any = 0.3
    decay_rate: float = 0.8
    step_offset: int = 0
    weight_decay_rate: float | None = 1e-5
    clipping_threshold: float | None = 1.0
    multiply_by_parameter_scale: bool = False
    factored: bool = True
    min_dim_size_to_factor: int = 128
    epsilon: float = 1e-30
    warmup_steps: int = 0
    decay_factor: float | None = None
    steps_per_decay: int | None = None
    schedule_step_offset: int = 0
    factor_rules: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: factoring.FACTOR_RULES
    )
    param_axes: Mapping[str, tuple[str | None, ...] | None] | None = None
    learning_rate_scales: Mapping[str, float] | None = None

    def with_param_axes(self, param_axes: Mapping[str, Any]) -> Adafactor:
        """This optimizer, factoring by the given logical axes (see `logical_axes`)."""
        return dataclasses.replace(self, param_axes=dict(param_axes))

    def factor_dims(self, path: str, shape: tuple[int, ...]) -> factoring.FactorDims | None:
        """How the parameter at `path` is factored (None: not at all); see `factor_dims`."""
        if not self.factored:
            return None
        axes = None
        if self.param_axes is not None:
            if path not in self.param_axes:
                raise ValueError(
                    f"Adafactor has logical axes for the model's parameters, but none for {path}; "
                    "pass the axes of the model being trained (with_param_axes)."
                )
            axes = self.param_axes[path]
        return factoring.factor_dims(
            axes, tuple(shape), self.min_dim_size_to_factor, self.factor_rules, path
        )

    def _chain(self) -> optax.GradientTransformation:
        schedule = learning_rate_schedule(
            self.learning_rate,
            self.warmup_steps,
            self.decay_factor,
            self.steps_per_decay,
            self.schedule_step_offset,
        )
        dims_of = lambda path, shape: self.factor_dims(path_name(path), shape)  # noqa: E731
        core = [
            factoring.scale_by_factored_rms(
                dims_of, self.decay_rate, self.step_offset, self.epsilon
            )
        ]
        if self.clipping_threshold is not None:
            core.append(optax.clip_by_block_rms(self.clipping_threshold))
        core.append(optax.scale(-1.0))
        steps = [optax.chain(*core), scale_by_logged_schedule(schedule)]  # -lr * u
        if self.learning_rate_scales:
            steps.append(scale_by_path(self.learning_rate_scales))  # -scale * lr * u
        if self.multiply_by_parameter_scale:
            steps.append(optax.scale_by_param_block_rms())
        if self.weight_decay_rate:
            steps.append(optax.add_decayed_weights(-self.weight_decay_rate))  # - wd * p
        return optax.chain(*steps)

    def init(self, params: Any) -> Any:
        """The optimizer state of `params` (optax's `init`)."""
        return self._chain().init(params)

    def update(self, updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        """Updates and the new state (optax's `update`)."""
        return self._chain().update(updates, state, params)


def adafactor(
    learning_rate: float = 0.3,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    weight_decay_rate: float | None = 1e-5,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = False,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
    warmup_steps: int = 0,
    decay_factor: float | None = None,
    steps_per_decay: int | None = None,
    schedule_step_offset: int = 0,
    learning_rate_scales: Mapping[str, float] | None = None,
) -> Adafactor:
    """Lester et al.'s Adafactor (see `Adafactor`), gin-configurable as `optimizers.adafactor`.

    Args:
      learning_rate: peak learning rate (paper: 0.3).
      decay_rate: exponent of the second-moment decay schedule (paper: 0.8).
      step_offset: subtracted from the step in the decay schedule (T5X's `step_offset`; the step
        starts at the initial checkpoint's, see `start_at_step`).
      weight_decay_rate: decoupled weight decay (paper: 1e-5; None: off).
      clipping_threshold: update clipping RMS (T5X default 1.0; None: off).
      multiply_by_parameter_scale: scale updates by the parameter's RMS (paper: False).
      factored: allow factored second moments (T5X default True).
      min_dim_size_to_factor: T5X's size heuristic's minimum (128), used for 2-D model weights
        and unannotated parameters.
      epsilon: added to squared gradients (T5X's epsilon1).
      warmup_steps: see `learning_rate_schedule`.
      decay_factor: see `learning_rate_schedule`.
      steps_per_decay: see `learning_rate_schedule`.
      schedule_step_offset: `learning_rate_schedule`'s `step_offset`.
      learning_rate_scales: `{regex: scale}`: parameters whose path matches train at
        `scale * learning_rate` (`scale_by_path`; weight decay unscaled, T5X's decay is not
        multiplied by the rate). DePT's gin file sets its low-rank pair's.

    Returns:
      An `Adafactor` (an optax transformation: `init`, `update`).
    """
    return Adafactor(
        learning_rate,
        decay_rate,
        step_offset,
        weight_decay_rate,
        clipping_threshold,
        multiply_by_parameter_scale,
        factored,
        min_dim_size_to_factor,
        epsilon,
        warmup_steps,
        decay_factor,
        steps_per_decay,
        schedule_step_offset,
        learning_rate_scales=None if not learning_rate_scales else dict(learning_rate_scales),
    )


def with_param_axes(optimizer: Any, param_axes: Mapping[str, Any]) -> Any:
    """`optimizer.with_param_axes(param_axes)` for optimizers that factor by logical axes
    (`Adafactor`); any other optax transformation is returned as it is."""
    set_axes = getattr(optimizer, "with_param_axes", None)
    return optimizer if set_axes is None else set_axes(param_axes)


def adamw(
    learning_rate: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-5,
    global_norm_clip: float | None = 1.0,
    warmup_steps: int = 0,
    decay_factor: float | None = None,
    steps_per_decay: int | None = None,
    schedule_step_offset: int = 0,
    learning_rate_scales: Mapping[str, float] | None = None,
) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay, multiplied by the rate as in optax), optional norm clipping.

    Args:
      learning_rate: peak learning rate.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      eps: Adam's epsilon.
      weight_decay: decoupled weight decay coefficient.
      global_norm_clip: clip gradients to this global norm first (None: off).
      warmup_steps: see `learning_rate_schedule`.
      decay_factor: see `learning_rate_schedule`.
      steps_per_decay: see `learning_rate_schedule`.
      schedule_step_offset: `learning_rate_schedule`'s `step_offset`.
      learning_rate_scales: `{regex: scale}`: parameters whose path matches train at
        `scale * learning_rate`, weight decay included (a torch AdamW parameter group's `lr`).

    Returns:
      An optax gradient transformation.
    """
    schedule = learning_rate_schedule(
        learning_rate, warmup_steps, decay_factor, steps_per_decay, schedule_step_offset
    )
    steps = [] if global_norm_clip is None else [optax.clip_by_global_norm(global_norm_clip)]
    steps += [
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay),
        scale_by_logged_schedule(schedule),
        optax.scale(-1.0),
    ]
    if learning_rate_scales:  # only then: the state of runs without scales keeps its structure
        steps.append(scale_by_path(learning_rate_scales))
    return optax.chain(*steps)


def start_at_step(opt_state: Any, step: int | jax.Array) -> Any:
    """Sets the step counters T5X ties to the training step to `step` (the initial checkpoint's).

    T5X restores the training step with the pretrained weights and counts on from it: its learning
    rate schedules and its Adafactor's second-moment decay `1 - (t + 1)^-decay_rate`
    (t = step - `step_offset`) see the absolute step, so 30,000 prompt-tuning steps from
    `checkpoint_1100000` (google-research/prompt-tuning's setting, `step_offset = 0`) decay as at
    step 1,100,000 and on. Here the same counters are the `count` of `ScheduleState` and of
    optax's Adafactor state (`FactoredState`). Counters of other optax states (e.g. Adam's bias
    correction) stay at zero, as T5X's optax optimizers start them from scratch when fine-tuning.

    Args:
      opt_state: the state returned by `optimizer.init` of an optimizer built here.
      step: the initial step.

    Returns:
      The state with those counters set to `step`.
    """

    def restart(state: Any) -> Any:
        if isinstance(state, (ScheduleState, optax.FactoredState)):
            return state._replace(count=jnp.asarray(step, jnp.asarray(state.count).dtype))
        return state

    return jax.tree.map(
        restart, opt_state, is_leaf=lambda x: isinstance(x, (ScheduleState, optax.FactoredState))
    )
