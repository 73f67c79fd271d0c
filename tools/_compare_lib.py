"""Engine of `tools/compare_methods.py`: methods from gin files, cached data, compiled runs.

Each method is a gin file of `gin_configs/prompts/` (its paper's defaults) on top of a model gin
file; `build_module` parses both with a few macro overrides (PROMPT_LENGTH, LABELS, NUM_TASKS,
DROPOUT_RATE, INITIAL_CHECKPOINT_PATH) and returns the gin-built `EncoderDecoder`. Full
fine-tuning is the model gin file with `PROMPT = None` and every parameter trainable.

Speed on a small CPU comes from doing every expensive thing once:
- each task's training pool and validation examples are tokenized once (`load_tasks`) into numpy
  arrays; a run draws its batches from the pool in a seed-dependent order (`run_batches`);
- a `MethodRunner` jits the whole training run (`step.run_steps`: `trainer.train_step` scanned) with
  the learning rate as a traced argument, so one compilation serves every seed, learning rate and
  task of the method (the tasks share one padded shape);
- validation is rank classification: every label string is scored as the target with
  `PromptModel.score_batch` (summed log-likelihood) and the best one is the prediction; label
  lists are padded to a common length by repeating the first label (a repeat never wins: argmax
  returns the first maximum), so the scoring function compiles once per method too.

Letters: K steps, B batch, M training pool size, N validation examples, C label strings,
T input length, S target length.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

import tasks
from prompt_tuning import t5
from prompt_tuning.analysis import similarity
from prompt_tuning.predict import evaluation
from prompt_tuning.predict.predictor import Predictor
from prompt_tuning.train import builder, data, optimizers, step
from prompt_tuning.train.model import PromptModel
from tasks import mixtures

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The per-token mean loss these comparisons were measured with (T5X's default is the sum).
_LOSS = {"loss_normalizing_factor": "NUM_REAL_TARGET_TOKENS"}
PROMPT_GIN_DIR = REPO_ROOT / "gin_configs" / "prompts"
MIXTURE = "builtin_equal_with_task_ids"
FULL_FINETUNE_REGEX = ".*"  # TRAINABLE_PARAMS_REGEX semantics: re.search matches every path.
TOKENIZE_LENGTHS = {"inputs": 64, "targets": 8}  # generous; trimmed to the data's longest.


@dataclasses.dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes:
      name: the name used on the command line and in the tables.
      gin_file: file in gin_configs/prompts/ (None: full fine-tuning, no prompt).
      paper: where the method comes from.
      multi_task: trained once on `MIXTURE` with task ids, evaluated on each task.
      learning_rate: the main table's Adafactor learning rate.
      trainable_regex: TRAINABLE_PARAMS_REGEX of the method.
      sources: prompt transfer: the source tasks whose prompts (plain prompt tuning at the
        table's settings, one per seed, `tools/_compare_transfer.py`) the method receives, bound
        as `SOURCE_PROMPTS` (a list of `.npy` files, in this order) and, when one file reaches
        the method, also as `PROMPT_FILE`. Such a method is not run on its own sources.
      pick_source: a similarity measure of `prompt_tuning.analysis.similarity` (SPoT's
        retrieval): only the source ranked most similar to the target's own prompt-tuning
        prompt (same seed and budget) reaches the method. None: every source does.
      source_stage: "mpt": the sources first train one multi-task prompt together (MPT's source
        stage: `MultitaskPrompt` distilled from their prompts, `tools/_compare_transfer.py`),
        and only its shared prompt P* [P, H] reaches the method, bound as `MPT_SOURCE`.
      bindings: further gin macros of the method, bound after the table's PROMPT_LENGTH (so a
        method that fixes PROMPT_LENGTH here keeps it: DePT's m and r give the P=20 budget).
      learning_rate_scales: `optimizers.adafactor(learning_rate_scales=...)` of the method
        (DePT's low-rank pair), as `(regex, scale)` pairs.
    """

    name: str
    gin_file: str | None
    paper: str
    multi_task: bool = False
    learning_rate: float = 0.3
    trainable_regex: str = optimizers.DEFAULT_TRAINABLE_PARAMS_REGEX
    sources: tuple[str, ...] = ()
    pick_source: str | None = None
    source_stage: str | None = None
    bindings: tuple[tuple[str, Any], ...] = ()
    learning_rate_scales: tuple[tuple[str, float], ...] = ()

    def make_optimizer(self) -> Callable[..., Any]:
        """`optimizers.adafactor`, with the method's learning-rate scales when it has some."""
        if not self.learning_rate_scales:
            return optimizers.adafactor
        return functools.partial(
            optimizers.adafactor, learning_rate_scales=dict(self.learning_rate_scales)
        )

    @property
    def has_length(self) -> bool:
        """Whether the prompt length P is a knob of the method."""
        return self.gin_file is not None


# DePT on the tiny T5 (H = 128, inputs padded to s = 13): m = 9, r = 10 give 9*128 + 13*10 +
# 10*128 = 2,562 parameters, the P = 20 prompt's 2,560 + 2 (128m + 141r = 2,560 has no solution);
# the pair trains at the paper code's 5e-3 / 3e-1 of the prompt's rate.
_DEPT_BINDINGS = (("PROMPT_LENGTH", 9), ("DEPT_RANK", 10))
_DEPT_SCALES = (("prompt/low_rank_", 5e-3 / 0.3),)
_LESTER, _SPT, _DPT, _IDPG, _SPOT = (
    "Lester et al. 2021",
    "Liu et al. 2022",
    "Xiao et al. 2023",
    "Wu et al. 2022",
    "Vu et al. 2022 (SPoT)",
)
_FROM_NPY = "prompt_tuning_from_npy.gin"
MPT_STAGE = "mpt"  # `Method.source_stage` of MPT; its stage's gin file and macro:
MPT_SOURCE_GIN, MPT_SOURCE_MACRO = "mpt_source.gin", "MPT_SOURCE"
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("pt_random_uniform", "prompt_tuning_random_uniform.gin", _LESTER),
        Method("pt_sampled_vocab", "prompt_tuning_sampled_vocab.gin", _LESTER),
        Method("pt_class_labels", "prompt_tuning_class_labels.gin", _LESTER),
        Method("spt_linear", "structured_linear.gin", _SPT),
        Method("spt_low_rank", "structured_low_rank.gin", _SPT),
        Method("spt_mlp", "structured_mlp.gin", _SPT),
        Method("spt_linear_multitask", "structured_linear.gin", _SPT, multi_task=True),
        Method("spt_low_rank_multitask", "structured_low_rank.gin", _SPT, multi_task=True),
        Method("spt_mlp_multitask", "structured_mlp.gin", _SPT, multi_task=True),
        Method("dpt", "dpt.gin", _DPT),
        Method("residual", "residual.gin", "Razdaibiedina et al. 2023 (DPT's baseline)"),
        Method("idpg_dense", "idpg_dense.gin", _IDPG),
        Method("idpg_phm", "idpg_phm.gin", _IDPG),
        Method("m_idpg_dense", "m_idpg_dense.gin", _IDPG),
        Method("m_idpg_phm", "m_idpg_phm.gin", _IDPG),
        Method("deep_prompt", "deep_prompt.gin", "P-tuning v2 (IDPG's baseline)"),
        Method("spot_topic", _FROM_NPY, _SPOT, sources=("builtin_topic",)),
        Method("spot_keyword", _FROM_NPY, _SPOT, sources=("builtin_keyword",)),
        Method(
            "spot_best", _FROM_NPY, _SPOT, sources=("builtin_topic", "builtin_keyword"),
            pick_source=similarity.COSINE_AVERAGE,
        ),
        Method(
            "attempt", "attempt.gin", "Asai et al. 2022",
            sources=("builtin_topic", "builtin_keyword"),
        ),
        Method(
            "mpt", "mpt.gin", "Wang et al. 2023 (MPT)",
            sources=("builtin_topic", "builtin_keyword"), source_stage=MPT_STAGE,
        ),
        Method(
            "dept", "dept.gin", "Shi & Lipani 2024 (DePT)", bindings=_DEPT_BINDINGS,
            learning_rate_scales=_DEPT_SCALES,
        ),
        Method(
            "full_finetune", None, "upper bound", learning_rate=1e-3,
            trainable_regex=FULL_FINETUNE_REGEX,
        ),
    )
}  # fmt: skip


@dataclasses.dataclass
class TaskData:
    """A task's examples as numpy arrays, tokenized once.

    Attributes:
      name: the seqio task (or, for `MIXTURE`, the mixture).
      labels: its label strings (empty for the mixture).
      train: training pool: `encoder_input_tokens [M, T]`, `decoder_input_tokens [M, S]`,
        `decoder_target_tokens [M, S]`, `decoder_loss_weights [M, S]` (+ `task_ids [M]`).
      validation: the first N validation examples (same features; empty for the mixture).
      gold: [N] index of each validation example's label in `labels`.
      rank_batch: every validation example paired with every (padded) label, [N*C, ...].
      label_index: [C] which real label each padded label row is.
    """

    name: str
    labels: tuple[str, ...]
    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    gold: np.ndarray | None = None
    rank_batch: dict[str, np.ndarray] | None = None
    label_index: np.ndarray | None = None


def _read(name: str, split: str, count: int, shuffle: bool) -> dict[str, np.ndarray]:
    """The first `count` converted examples of a task or mixture split, as one numpy batch."""
    dataset = data.get_dataset(
        name, TOKENIZE_LENGTHS, split, count, shuffle=shuffle, seed=0 if shuffle else None,
        num_epochs=None if shuffle else 1,
    )  # fmt: skip
    return next(dataset.as_numpy_iterator())


def _longest(arrays: Sequence[Mapping[str, np.ndarray]], key: str) -> int:
    """The longest non-padding length of feature `key` over `arrays`."""
    return max(int((a[key] > 0).sum(axis=1).max()) for a in arrays if len(a))


def _trim(batch: Mapping[str, np.ndarray], input_length: int, target_length: int) -> dict:
    """Cuts [*, T] / [*, S] features to the given lengths (padding only)."""
    out = {}
    for key, value in batch.items():
        if key == "encoder_input_tokens":
            value = value[:, :input_length]
        elif key.startswith("decoder_"):
            value = value[:, :target_length]
        out[key] = np.ascontiguousarray(value)
    return out


def load_tasks(
    names: Sequence[str], pool_size: int, num_validation: int, mixture_pool: int = 0
) -> tuple[dict[str, TaskData], tuple[int, int]]:
    """Tokenizes every task's training pool and validation examples, with one shared shape.

    Args:
      names: the built-in classification tasks.
      pool_size: M, training examples kept per task (a run cycles through them).
      num_validation: N, validation examples evaluated per task.
      mixture_pool: examples of `MIXTURE` to keep (0: do not load it).

    Returns:
      ({name: TaskData} (plus `MIXTURE` when loaded), (T, S)).

    Raises:
      ValueError: a task has no label strings, or its texts do not fit the tokenized lengths.
    """
    loaded = {}
    for name in names:
        labels = tasks.label_strings(name)
        if not labels:
            raise ValueError(f"Task {name!r} has no label strings; use a classification task.")
        train = _read(name, "train", pool_size, shuffle=False)
        validation = _read(name, "validation", num_validation, shuffle=False)
        loaded[name] = TaskData(name, tuple(labels), train, validation)
    if mixture_pool:
        loaded[MIXTURE] = TaskData(MIXTURE, (), _read(MIXTURE, "train", mixture_pool, True), {})
    arrays = [a for t in loaded.values() for a in (t.train, t.validation)]
    lengths = (_longest(arrays, "encoder_input_tokens"), _longest(arrays, "decoder_target_tokens"))
    if lengths[0] >= TOKENIZE_LENGTHS["inputs"] or lengths[1] >= TOKENIZE_LENGTHS["targets"]:
        raise ValueError(f"Examples longer than {TOKENIZE_LENGTHS} tokens; raise TOKENIZE_LENGTHS.")
    for task in loaded.values():
        task.train = _trim(task.train, *lengths)
        task.validation = _trim(task.validation, *lengths) if task.validation else {}
    _add_rank_batches([t for t in loaded.values() if t.labels], lengths[1])
    return loaded, lengths


def _add_rank_batches(task_list: Sequence[TaskData], target_length: int) -> None:
    """Fills `gold`, `rank_batch` and `label_index`, padding every label list to the longest."""
    num_labels = max(len(t.labels) for t in task_list)
    for task in task_list:
        vocabulary = data.get_task_or_mixture(task.name).output_features["targets"].vocabulary
        tokens = evaluation.tokenize_labels(task.labels, vocabulary, target_length)  # [C, S]
        targets = task.validation["decoder_target_tokens"]  # [N, S]
        matches = (targets[:, None, :] == tokens[None, :, :]).all(axis=-1)  # [N, C]
        if not matches.any(axis=1).all():
            raise ValueError(f"A validation target of {task.name} is none of {task.labels}.")
        task.gold = matches.argmax(axis=1)
        task.label_index = np.array(
            list(range(len(task.labels))) + [0] * (num_labels - len(task.labels))
        )
        padded = tokens[task.label_index]  # [C_max, S]
        task.rank_batch = evaluation.label_batch(task.validation, padded)


def run_batches(
    pool: Mapping[str, np.ndarray], steps: int, batch_size: int, seed: int
) -> dict[str, np.ndarray]:
    """A run's K batches: the pool in a `seed`-shuffled order, reshuffled each pass.

    Returns:
      Features stacked as [K, B, ...].
    """
    size = len(pool["encoder_input_tokens"])
    rng = np.random.default_rng(seed)
    needed = steps * batch_size
    order = np.concatenate([rng.permutation(size) for _ in range(-(-needed // size))])[:needed]
    return {k: v[order].reshape(steps, batch_size, *v.shape[1:]) for k, v in pool.items()}


def _gin_value(name: str) -> Any:
    """The value of gin macro `name`, calling it when it is a `@fn()` reference."""
    value = gin.query_parameter(f"%{name}")
    if hasattr(value, "scoped_configurable_fn"):
        value = value.scoped_configurable_fn()
    return value


def _parse_gin(files: Sequence[str], bindings: Mapping[str, Any]) -> None:
    """Parses gin files plus `NAME = repr(value)` bindings into a fresh global config."""
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO_ROOT))
    lines = [f"{name} = {value!r}" for name, value in bindings.items()]
    gin.parse_config_files_and_bindings(list(files), lines, finalize_config=False)


@dataclasses.dataclass
class FrozenModel:
    """The frozen T5 every method starts from.

    Attributes:
      model_gin: the model gin file.
      checkpoint: INITIAL_CHECKPOINT_PATH bound for every method (a random model is saved first).
      params: the full T5 parameters (numpy).
      description: what the model is, for the reports.
      dropout: DROPOUT_RATE bound for every method.
    """

    model_gin: str
    checkpoint: str
    params: dict[str, Any]
    description: str
    dropout: float


def load_frozen(
    model_gin: str, workdir: str, dropout: float = 0.0, checkpoint: str | None = None
) -> FrozenModel:
    """Loads the model gin file's frozen T5 (or makes and saves a random one).

    Args:
      model_gin: a gin_configs/models/*.gin file.
      workdir: where a random model's T5X checkpoint is written (its embedding is read by the
        sampled-vocabulary and class-label initializers).
      dropout: DROPOUT_RATE.
      checkpoint: overrides the gin file's INITIAL_CHECKPOINT_PATH.

    Returns:
      A `FrozenModel`.
    """
    bindings = {"PROMPT": None, "DROPOUT_RATE": dropout}
    if checkpoint is not None:
        bindings["INITIAL_CHECKPOINT_PATH"] = checkpoint
    _parse_gin([model_gin], bindings)
    module = _gin_value("MODEL")
    path = _gin_value("INITIAL_CHECKPOINT_PATH")
    config = module.config
    if path is None:
        boxed = PromptModel(module).init_boxed(jax.random.key(0), 8, 4)
        params = jax.device_get(nn.unbox(boxed))
        path = os.path.join(workdir, "random_t5", "checkpoint_0")
        t5.checkpoints.save_t5x_checkpoint(params, path)
        kind = "random (seed 0)"
    else:
        _, params = t5.load_checkpoint(path, config)
        shown = os.path.relpath(path, REPO_ROOT) if str(path).startswith(str(REPO_ROOT)) else path
        kind = f"pretrained ({shown})"
    description = (
        f"{kind}; H={config.emb_dim}, {config.num_encoder_layers}+{config.num_decoder_layers} "
        f"layers, V={config.vocab_size}, {sum(np.size(x) for x in jax.tree.leaves(params)):,} "
        "parameters"
    )
    return FrozenModel(model_gin, str(path), params, description, dropout)


def build_module(
    frozen: FrozenModel,
    method: Method,
    length: int | None = None,
    labels: Sequence[str] = ("positive", "negative"),
    num_tasks: int = 1,
    source_files: Sequence[str] = (),
    input_length: int | None = None,
) -> nn.Module:
    """The gin-built `EncoderDecoder` of `method` (model gin + the method's prompt gin).

    Args:
      frozen: the frozen model (its gin file and checkpoint path).
      method: the method.
      length: PROMPT_LENGTH override (None: the gin file's default).
      labels: LABELS (read by the class-label initializer only; cut to the first P when the
        prompt has fewer rows than labels).
      num_tasks: NUM_TASKS (read by structured prompts only).
      source_files: the source prompt `.npy` files of a transfer method (`Method.sources`):
        bound as SOURCE_PROMPTS, and as PROMPT_FILE when there is exactly one (for a method
        with `source_stage`, the stage's one output file, bound as MPT_SOURCE).
      input_length: TASK_FEATURE_LENGTHS['inputs'] (read by DePT only: its s).

    Returns:
      The linen module.

    Raises:
      ValueError: a transfer method without source files.
    """
    if method.sources and not source_files:
        raise ValueError(
            f"Method {method.name!r} transfers from {method.sources}: pass their prompt files "
            "(tools/_compare_transfer.source_prompts)."
        )
    bindings = {"DROPOUT_RATE": frozen.dropout, "INITIAL_CHECKPOINT_PATH": frozen.checkpoint}
    files = [frozen.model_gin]
    if method.gin_file is None:
        bindings["PROMPT"] = None
    else:
        files.append(str(PROMPT_GIN_DIR / method.gin_file))
        bindings.update(LABELS=list(labels)[: length or None], NUM_TASKS=num_tasks)
        if length is not None:
            bindings["PROMPT_LENGTH"] = length
        if source_files:
            bindings["SOURCE_PROMPTS"] = [str(f) for f in source_files]
            if len(source_files) == 1:
                bindings["PROMPT_FILE"] = str(source_files[0])
            if method.source_stage == MPT_STAGE:
                bindings[MPT_SOURCE_MACRO] = str(source_files[0])
        if input_length is not None:
            bindings["TASK_FEATURE_LENGTHS"] = {"inputs": input_length, "targets": 1}
        bindings.update(method.bindings)
    _parse_gin(files, bindings)
    try:
        return _gin_value("MODEL")
    finally:
        gin.clear_config()


def _train_run(
    trainable: Any,
    frozen: Any,
    batches: Mapping[str, jax.Array],
    rng: jax.Array,
    learning_rate: jax.Array,
    *,
    model: PromptModel,
    make_optimizer: Callable[..., Any],
) -> tuple[Any, jax.Array]:
    """A whole training run: the library's `step.run_steps` over the [K, B, ...] batches, with
    the optimizer and initial state every run builds (`builder.run_optimizer`, `step.init_state`;
    `builder.build_run` cannot serve here: the whole run is one jitted program whose learning
    rate is an argument).

    Returns:
      (trained parameters, [K] training losses).
    """
    # The trainer's optimizer (`builder.run_optimizer`); the rate is traced, not static.
    optimizer = builder.run_optimizer(model, make_optimizer(learning_rate=learning_rate))
    state = step.init_state(optimizer, trainable)
    state, metrics = step.run_steps(state, frozen, batches, rng, model=model, optimizer=optimizer)
    return state.params, metrics["loss"]


class MethodRunner:
    """One method compiled once: initialization, the training run and rank classification.

    `module_for(labels)` builds the method's module; only the initializer may depend on the labels
    (class-label prompts) and, for a transfer method, on the source prompt files
    (`module_for(labels, source_files)`), so the training and scoring programs are compiled from
    the first module and reused for every task, seed and learning rate.
    """

    def __init__(
        self,
        module_for: Callable[[Sequence[str]], nn.Module],
        frozen: FrozenModel,
        regex: str,
        lengths: tuple[int, int],
        make_optimizer: Callable[..., Any] = optimizers.adafactor,
    ):
        self._module_for = module_for
        self._lengths = lengths
        self._regex = regex
        self._inits: dict[tuple, Callable[[jax.Array], Any]] = {}
        self.model = PromptModel(module_for(("positive", "negative")), **_LOSS)
        try:
            loaded, self.frozen = optimizers.split_params(frozen.params, regex)
        except ValueError:  # the regex matches no T5 weight (prompt methods)
            loaded, self.frozen = {}, frozen.params
        self._loaded = jax.device_put(loaded)
        self.frozen = jax.device_put(self.frozen)
        self._train = jax.jit(
            functools.partial(_train_run, model=self.model, make_optimizer=make_optimizer)
        )
        self.predictor = Predictor(self.model)

    def _init_fn(
        self, labels: Sequence[str], source_files: Sequence[str] = ()
    ) -> Callable[[jax.Array], Any]:
        key = (tuple(labels), tuple(source_files))
        if key not in self._inits:
            module = (
                self._module_for(labels, tuple(source_files))
                if source_files
                else self._module_for(labels)
            )
            model = PromptModel(module, **_LOSS)
            init = lambda rng: optimizers.split_params(
                nn.unbox(model.init_boxed(rng, *self._lengths)), self._regex
            )[0]
            self._inits[key] = jax.jit(init)
        return self._inits[key]

    def initial(self, seed: int, labels: Sequence[str], source_files: Sequence[str] = ()) -> Any:
        """Starting trainable parameters: the checkpoint's where it has them, else initialized
        (from `source_files` for a transfer method)."""
        fresh = self._init_fn(labels, source_files)(jax.random.key(seed))
        return optimizers.merge_params(self._loaded, fresh)

    @staticmethod
    def count(params: Any) -> int:
        """Number of parameters in a tree."""
        return int(sum(np.size(x) for x in jax.tree.leaves(params)))

    def train(
        self, trainable: Any, batches: Mapping[str, np.ndarray], seed: int, learning_rate: float
    ) -> tuple[Any, np.ndarray]:
        """Trains from `trainable` on [K, B, ...] `batches`; dropout keys come from `seed`.

        Returns:
          (trained parameters, [K] losses as numpy).
        """
        self.model.check_task_ids(batches, "the training batches")
        rng = jax.random.fold_in(jax.random.key(seed), 1)
        rate = jnp.asarray(learning_rate, jnp.float32)
        params, losses = self._train(trainable, self.frozen, batches, rng, rate)
        return params, np.asarray(jax.device_get(losses))

    def accuracy(self, trainable: Any, task: TaskData, task_id: int | None = None) -> float:
        """Rank-classification accuracy on the task's validation examples.

        Args:
          trainable: trained parameters.
          task: the task (with `rank_batch`).
          task_id: passed as `task_ids` (multi-task prompts); None passes none.

        Returns:
          The fraction of examples whose best-scoring label is the gold one.
        """
        batch = dict(task.rank_batch)
        if task_id is not None:
            batch["task_ids"] = np.full(len(batch["encoder_input_tokens"]), task_id, np.int32)
            self.model.check_task_ids(batch, f"task {task.name!r}")
        params = optimizers.merge_params(trainable, self.frozen)
        scores = self.predictor.score(params, batch)  # [N*C]
        choice = task.label_index[scores.reshape(len(task.gold), -1).argmax(axis=1)]  # [N]
        return float(np.mean(choice == task.gold))


def mixture_task_ids() -> dict[str, int]:
    """Task id of each task of `MIXTURE` (its position in the mixture's task list)."""
    return {name: i for i, name in enumerate(mixtures.MIXTURE_TASKS[MIXTURE])}
