"""A run's starting parameters on the mesh: the frozen model loaded sharded, the prompt initialized.

`initial_params` is what training, evaluation, inference and a server call to get `(trainable,
frozen)` as global `jax.Array`s on one `("data", "model")` mesh:

- the frozen half comes from INITIAL_CHECKPOINT_PATH through
  `t5.sharded_loading.load_checkpoint_sharded` (each host reads only its devices' slices; its
  shapes are checked before anything is read), or from a random initialization with RANDOM_SEED
  made in the frozen shardings by one small program per kind of parameter (`t5.random_init`;
  no host ever holds the whole model);
- the trainable half is initialized by the prompt's initializers in one jitted function; the
  token embedding that sampled-vocabulary and class-label initializers sample from is passed in
  as an argument (the frozen model's own array, or one read once on the host), never baked into
  the program as a constant;
- or the prompt comes from PROMPT_FILE (`prompt_files`: `[P, H]`, `[N, P, H]` or a `.npz`).

Nothing here gathers the frozen model to a host.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.parallel import partitioning
from prompt_tuning.prompts import initializers
from prompt_tuning.t5 import checkpoint_tree, precision, random_init, sharded_loading
from prompt_tuning.train import optimizers, prompt_files

EMBEDDING = ("token_embedder", "embedding")


def check_same_tree(loaded: Mapping[str, tuple], expected: Mapping[str, tuple], path: str) -> None:
    """Checks that a checkpoint's parameter names and shapes are the frozen model's.

    Args:
      loaded: `{name: shape}` of the checkpoint.
      expected: `{name: shape}` of the model's frozen parameters.
      path: INITIAL_CHECKPOINT_PATH (for the message).

    Raises:
      ValueError: names or shapes differ (the first few differences are listed).
    """
    problems = [f"missing {k}" for k in sorted(set(expected) - set(loaded))]
    problems += [
        f"unexpected {k}"
        for k in sorted(set(loaded) - set(expected))
        if not k.startswith(checkpoint_tree.PROMPT_SCOPE)
    ]
    common = sorted(set(loaded) & set(expected))
    problems += [
        f"{k}: {tuple(loaded[k])} != {tuple(expected[k])}"
        for k in common
        if tuple(loaded[k]) != tuple(expected[k])
    ]
    if problems:
        raise ValueError(
            f"The checkpoint at INITIAL_CHECKPOINT_PATH {path} does not fit MODEL: "
            f"{'; '.join(problems[:6])}. Use the model gin file matching the checkpoint's size."
        )


def _shapes(tree: Any) -> dict[str, tuple]:
    return {name: tuple(x.shape) for name, x in checkpoint_tree.flatten(tree).items()}


def load_frozen(
    path: str,
    model: Any,
    frozen_shardings: Any,
    frozen_abstract: Any,
    dtype: Any = None,
    log: Any = print,
    keep: Collection[str] = (),
) -> Any:
    """The frozen parameters from a checkpoint, straight into global arrays (sharded loading).

    Args:
      path: INITIAL_CHECKPOINT_PATH.
      model: the `PromptModel` (its config must fit the checkpoint).
      frozen_shardings: the frozen tree's shardings.
      frozen_abstract: the frozen tree's shape structs.
      dtype: FROZEN_DTYPE, the dtype of the matmul weights (`precision.MATMUL_WEIGHTS`); norm
        scales and relative-position tables keep the stored dtype. None: as stored.
      log: where the loading summary (bytes read, peak RSS) goes (primary process only).
      keep: "/"-joined names loaded in their stored dtype whatever `dtype` says.

    Returns:
      The frozen tree of global `jax.Array`s.

    Raises:
      ValueError: the checkpoint does not fit the model (before reading any array); for a Hugging
        Face folder, the first `T5Config` field its config.json states otherwise is named.
    """
    from prompt_tuning.t5 import checkpoints as t5_checkpoints  # noqa: PLC0415

    _, found, shapes = t5_checkpoints.checkpoint_shapes(path)
    if found is not None:  # A Hugging Face folder: its config.json must describe MODEL.
        where = f"INITIAL_CHECKPOINT_PATH {path} (config.json)"
        checkpoint_tree.check_same_architecture(model.config, found, where)
    check_same_tree(shapes, _shapes(frozen_abstract), path)
    flat_shardings = checkpoint_tree.flatten(frozen_shardings)
    dtypes = {
        name: None if name in keep else precision.matmul_weight_dtype(name, dtype)
        for name in flat_shardings
    }
    _, frozen, stats = sharded_loading.load_checkpoint_sharded(
        path, flat_shardings, model.config, dtypes
    )
    if log is not None and jax.process_index() == 0:
        log(stats.summary())
    return frozen


def run_keys(random_seed: int) -> tuple[jax.Array, jax.Array]:
    """`(init_rng, step_rng)` of RANDOM_SEED: the first initializes the parameters, the second
    drives dropout; evaluation and serving rebuild a run's random frozen model from the first."""
    init_rng, step_rng = jax.random.split(jax.random.key(random_seed))
    return init_rng, step_rng


def placeholder_embeddings(model: Any) -> dict[Any, Any]:
    """Zero tables standing in for the initializers' embeddings while only shapes are traced.

    Created inside the trace (`jnp.zeros` under `eval_shape` or a jit whose prompt outputs are
    dropped), so nothing is read or allocated.
    """
    shape = (model.config.vocab_size, model.config.emb_dim)
    return {
        source.key: (lambda: jnp.zeros(shape, jnp.float32))
        for source in initializers.embedding_sources(model.prompt)
    }


def abstract_params(
    model: Any, task_feature_lengths: Mapping[str, int], rng: jax.Array | None = None
) -> Any:
    """The boxed parameter tree of `model` as shape structs (nothing read, nothing allocated)."""
    rng = jax.random.key(0) if rng is None else rng
    init = functools.partial(
        model.init_boxed,
        input_length=task_feature_lengths.get("inputs", 8),
        target_length=task_feature_lengths.get("targets", 8),
    )
    with initializers.provided_embeddings(placeholder_embeddings(model)):
        return jax.eval_shape(init, rng)


def _embedding_inputs(
    prompt: Any, frozen: Any, initial_checkpoint_path: str | None, mesh: jax.sharding.Mesh
) -> dict[Any, jax.Array]:
    """The embeddings the prompt's initializers sample from, as arguments for the jitted init.

    The frozen model's own embedding (source None or INITIAL_CHECKPOINT_PATH) is the array already
    loaded; any other source is read once on the host and replicated.
    """
    own_key = None
    if initial_checkpoint_path is not None and "://" not in str(initial_checkpoint_path):
        own_key = os.path.realpath(os.fspath(initial_checkpoint_path))
    inputs = {}
    for source in initializers.embedding_sources(prompt):
        if (
            source.key is None
            or source.key == own_key
            or source.embedding == (initial_checkpoint_path)
        ):
            inputs[source.key] = frozen[EMBEDDING[0]][EMBEDDING[1]]
        else:
            inputs[source.key] = partitioning.replicate(source.read(), mesh)
    return inputs


def _cast_embedding(frozen: Any, dtype: Any, frozen_shardings: Any) -> Any:
    """`frozen` with its embedding cast to FROZEN_DTYPE `dtype` (None: as is).

    The embedding is loaded in its stored dtype so that sampled-vocabulary and class-label prompt
    initializers read the checkpoint's values (as Lester et al.'s code does), and cast only after
    (one pass; the stored-dtype copy is freed).
    """
    if dtype is None or EMBEDDING[0] not in frozen:
        return frozen
    table = frozen[EMBEDDING[0]][EMBEDDING[1]]
    sharding = frozen_shardings[EMBEDDING[0]][EMBEDDING[1]]
    cast = jax.jit(lambda x: x.astype(dtype), out_shardings=sharding)
    out = dict(frozen)
    out[EMBEDDING[0]] = dict(frozen[EMBEDDING[0]], **{EMBEDDING[1]: cast(table)})
    return out


def trainable_initializer(
    init_fn: Any, trainable_shardings: Any, split: Any, keys: list[Any]
) -> Any:
    """The jitted initialization of the trainable parameters, embeddings as arguments.

    Args:
      init_fn: `rng -> boxed params` (the module's init).
      trainable_shardings: output shardings.
      split: `params -> (trainable, frozen)`.
      keys: the `EmbeddingSource` keys of the embeddings passed in (in argument order).

    Returns:
      `f(rng, [tables]) -> trainable` (jit drops the frozen initializers).
    """

    def init(r: jax.Array, tables: list[jax.Array]) -> Any:
        with initializers.provided_embeddings(dict(zip(keys, tables))):
            return split(nn.unbox(init_fn(r)))[0]

    return jax.jit(init, out_shardings=trainable_shardings)


def random_frozen(
    model: Any,
    init: Any,
    split: Any,
    draws: Mapping[str, random_init.Draw],
    rng: jax.Array,
    frozen_shardings: Any,
    dtype: Any,
) -> Any:
    """A random frozen model (no INITIAL_CHECKPOINT_PATH), made in its shardings.

    Matmul weights are cast to FROZEN_DTYPE `dtype` inside the programs that draw them (no float32
    copy is ever materialised); the embedding keeps its dtype until the prompt's initializers have
    read it (`_cast_embedding`). Every frozen parameter with a recorded initializer (all of a T5's,
    `random_init`) is drawn by a small program of its own; otherwise the whole init is compiled
    as one program (slow to compile for large models, but any module will do).
    """
    flat_shardings = checkpoint_tree.flatten(frozen_shardings)
    if all(name in draws for name in flat_shardings):
        dtypes = {
            name: None
            if name == "/".join(EMBEDDING)
            else precision.matmul_weight_dtype(name, dtype)
            for name in flat_shardings
        }
        return checkpoint_tree.unflatten(random_init.draw(draws, rng, flat_shardings, dtypes))

    def init_frozen(r: jax.Array) -> Any:
        with initializers.provided_embeddings(placeholder_embeddings(model)):
            frozen = split(nn.unbox(init(r)))[1]
        cast = precision.cast_matmul_weights(frozen, dtype)
        if EMBEDDING[0] in frozen:  # cast once the prompt's initializers have read it
            cast[EMBEDDING[0]] = frozen[EMBEDDING[0]]
        return cast

    return jax.jit(init_frozen, out_shardings=frozen_shardings)(rng)


def initial_params(
    model: Any,
    mesh: jax.sharding.Mesh,
    rng: jax.Array,
    task_feature_lengths: Mapping[str, int],
    initial_checkpoint_path: str | None,
    trainable_params_regex: str,
    frozen_dtype: str | None = None,
    prompt_file: str | None = None,
    allow_no_trainable: bool = False,
    log: Any = print,
) -> tuple[Any, Any]:
    """The run's starting (trainable, frozen) parameters, placed on the mesh (see the module doc).

    Args:
      model: the `PromptModel`.
      mesh: the device mesh.
      rng: initialization key.
      task_feature_lengths: for the initialization batch's shapes.
      initial_checkpoint_path: frozen checkpoint, or None.
      trainable_params_regex: TRAINABLE_PARAMS_REGEX.
      frozen_dtype: FROZEN_DTYPE, the dtype of the frozen matmul weights (kernels, embedding; e.g.
        "bfloat16"); norm scales and relative-position tables keep theirs. None keeps all as
        initialized or stored.
      prompt_file: PROMPT_FILE replacing the prompt parameters (`prompt_files.load_into`).
      allow_no_trainable: an empty trainable half is fine (evaluating a model without prompt).
      log: receives the loading summary line (None: silent).

    Returns:
      (trainable, frozen) nested dicts of global `jax.Array`s.

    Raises:
      ValueError: checkpoint or prompt file shapes do not fit the model (`PromptFileError`).
    """
    init = functools.partial(
        model.init_boxed,
        input_length=task_feature_lengths.get("inputs", 8),
        target_length=task_feature_lengths.get("targets", 8),
    )
    with random_init.recording() as draws:  # each T5 parameter's initializer, for `random_frozen`
        boxed = abstract_params(model, task_feature_lengths, rng)
    shardings = partitioning.params_shardings(boxed, mesh)
    split = functools.partial(
        optimizers.split_params, regex=trainable_params_regex, allow_empty=allow_no_trainable
    )
    trainable_sh, frozen_sh = split(shardings)
    dtype = None if frozen_dtype is None else jnp.dtype(frozen_dtype)
    if initial_checkpoint_path is None:
        frozen = random_frozen(model, init, split, draws, rng, frozen_sh, dtype)
    else:
        abstract = split(nn.unbox(boxed))[1]
        frozen = load_frozen(
            initial_checkpoint_path, model, frozen_sh, abstract, dtype, log, ("/".join(EMBEDDING),)
        )
    embeddings = _embedding_inputs(model.prompt, frozen, initial_checkpoint_path, mesh)
    keys = list(embeddings)
    initialize = trainable_initializer(init, trainable_sh, split, keys)
    trainable = initialize(rng, [embeddings[k] for k in keys])
    del embeddings
    frozen = _cast_embedding(frozen, dtype, frozen_sh)
    if prompt_file is not None:
        trainable = prompt_files.load_into(trainable, prompt_file, model.prompt)
    return trainable, frozen
