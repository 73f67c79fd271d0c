r"""Compares the prompt parameterizations on the frozen tiny T5: accuracy, parameters, sweeps.

The full comparison, which made docs/results.md (288 results; 32 minutes on 2 CPU cores
shared with other jobs, 1-minute load 2-4):

    python tools/compare_methods.py --docs docs/results.md

A one-minute check of the machinery: `python tools/compare_methods.py --quick`.

A small-scale reproduction of the papers' comparisons on the built-in tasks *without* their text
prefix (`builtin_sentiment`, `builtin_topic`, `builtin_keyword`; the tiny T5 saw them in
pretraining only with a prefix, so a prompt has to supply the task). Methods (`--methods`, see
`tools/_compare_lib.METHODS`), each built from its gin file in gin_configs/prompts/ (its paper's
defaults) with one shared prompt length `--length`:
- prompt tuning (Lester et al.) with random-uniform, sampled-vocabulary and class-label inits;
- structured prompts (linear, low-rank, MLP hypernetworks), single-task and multi-task (one run on
  the mixture `builtin_equal_with_task_ids` with a task embedding per task, trained for
  `--steps` x number of tasks steps so it sees as many examples of each task, evaluated on each);
- DPT (A.B), residual prompt tuning, IDPG (S- and M-IDPG, dense and PHM), deep prompts;
- transfer (`tools/_compare_transfer.py`, never run on its own sources): SPoT (a source prompt,
  same settings and seed, cached in `--source_cache`, starts the target's; `spot_best`: the most
  similar source), ATTEMPT and MPT (a source stage distilled from them); DePT (same P budget);
- full fine-tuning of every weight (no prompt), the upper bound.
Every run trains with Adafactor as in Lester et al. (constant rate, decay exponent 0.8, clipping
1.0, weight decay 1e-5): rate `--prompt_lr` (default Lester's 0.3) for prompts and 1e-3 for full
fine-tuning (T5's fine-tuning rate), batch `--batch_size`, `--steps` steps, no dropout (the tiny T5
was pretrained without it), and is scored on `--eval_examples` validation examples by rank
classification over the task's label strings (`tasks.label_strings`). Sweeps: learning rate
(`--lrs`, the structured-prompt paper's 0.01 / 0.1 / 1; it used AdamW, we keep Adafactor) for the
single-task prompt methods, and prompt length (`--lengths`, Lester et al.'s 1 / 5 / 20 / 100). Full
fine-tuning is left out of the learning-rate sweep: Adafactor at rate 1 on every weight destroys the
pretrained model.

Outputs in `--output`: table.md, results.json (every run), lr_sweep.png, length_sweep.png; with
`--docs PATH` also the page PATH (tables, the plots copied to PATH's stem folder, the command line,
the machine and the total time). `--model_gin gin_configs/models/t5_1_1_tiny.gin` runs on a random
tiny T5 instead (development, tests).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

if __package__ in (None, ""):  # run as `python tools/compare_methods.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tools import _compare_lib as lib  # noqa: E402
from tools import _compare_transfer as transfer  # noqa: E402

BUILTIN_TASKS = ("builtin_sentiment", "builtin_topic", "builtin_keyword")
SWEEP_EXCLUDED = "full_finetune"
# Defaults of the full comparison and of --quick; a flag given on the command line wins.
FULL = dict(
    methods=list(lib.METHODS), tasks=list(BUILTIN_TASKS), seeds=[0, 1, 2], steps=200,
    batch_size=32, eval_examples=300, pool_size=6400, length=20, lrs=[0.01, 0.1, 1.0],
    lr_sweep_methods=None, lr_sweep_tasks=["builtin_sentiment"], lengths=[1, 5, 20, 100],
    length_sweep_methods=["pt_class_labels", "dpt"], length_sweep_tasks=["builtin_sentiment"],
)  # fmt: skip
QUICK = dict(
    FULL, methods=["pt_class_labels", "dpt"], tasks=["builtin_sentiment"], seeds=[0, 1],
    steps=10, eval_examples=64, pool_size=320, lrs=[0.1, 1.0], lengths=[5, 20],
    length_sweep_methods=["pt_class_labels"],
)  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags; unset ones take `FULL` (or `QUICK`) values."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Methods: " + ", ".join(lib.METHODS),
    )  # fmt: skip
    add = parser.add_argument
    add("--quick", action="store_true", help="A ~1 minute run (2 methods, 1 task, 2 seeds).")
    add("--model_gin", default="gin_configs/models/t5_1_1_tiny_pretrained.gin")
    add(
        "--checkpoint",
        help="Frozen T5 checkpoint (default: the model gin's INITIAL_CHECKPOINT_PATH).",
    )
    add("--output", default="results/compare_methods")
    add("--docs", default=None, help="Also write this Markdown page (e.g. docs/results.md).")
    add("--methods", nargs="+", choices=list(lib.METHODS), help="Methods of the main table.")
    add("--tasks", nargs="+", choices=BUILTIN_TASKS)
    add("--seeds", nargs="+", type=int)
    add("--steps", type=int, help="Training steps of a single-task run.")
    add("--batch_size", type=int)
    add("--eval_examples", type=int, help="Validation examples per task.")
    add("--pool_size", type=int, help="Training examples tokenized per task.")
    add("--length", type=int, help="Prompt length P of the main table and the lr sweep.")
    add("--lrs", nargs="+", type=float, help="Learning rates of the sweep.")
    add("--lr_sweep_methods", nargs="*", help="Default: the main table's single-task prompts.")
    add("--lr_sweep_tasks", nargs="*", choices=BUILTIN_TASKS)
    add("--lengths", nargs="+", type=int, help="Prompt lengths of the length sweep.")
    add("--length_sweep_methods", nargs="*", choices=list(lib.METHODS))
    add("--length_sweep_tasks", nargs="*", choices=BUILTIN_TASKS)
    add(
        "--source_cache",
        help="Where source prompts of transfer methods are kept (default: OUTPUT/source_prompts).",
    )
    add("--dropout", type=float, default=0.0, help="DROPOUT_RATE of the frozen model.")
    add(
        "--prompt_lr", type=float, default=0.3,
        help="Learning rate of every prompt method in the main table and the length sweep "
        "(default: Lester et al.'s 0.3); full fine-tuning keeps its own.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    prompt_methods = [m for m in args.methods if _sweepable(lib.METHODS[m])]
    if args.lr_sweep_methods is None:
        args.lr_sweep_methods = prompt_methods
    for name in [*args.lr_sweep_methods, *args.length_sweep_methods]:
        if name not in lib.METHODS or not _sweepable(lib.METHODS[name]):
            parser.error(f"{name!r} cannot be swept: use a single-task prompt method.")
    return args


def main_lr(name: str, args: argparse.Namespace) -> float:
    """The rate of a method outside the lr sweep: `--prompt_lr` for prompts, else its own."""
    method = lib.METHODS[name]
    return args.prompt_lr if method.has_length else method.learning_rate


def _sweepable(method: lib.Method) -> bool:
    """Single-task prompt methods are swept (not multi-task, transfer or full fine-tuning runs)."""
    return method.has_length and not method.multi_task and not method.sources


def plan_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every distinct run: method, task (the mixture for multi-task), seed, lr, length."""
    runs: dict[tuple, dict[str, Any]] = {}

    def add(name: str, tasks: Sequence[str], lr: float, length: int | None) -> None:
        method = lib.METHODS[name]
        length = length if method.has_length else None
        for task in [lib.MIXTURE] if method.multi_task else tasks:
            if task in method.sources:  # transfer from a task to itself: not a transfer
                continue
            for seed in args.seeds:
                key = (name, task, seed, lr, length)
                runs.setdefault(key, dict(method=name, task=task, seed=seed, lr=lr, length=length))

    for name in args.methods:
        add(name, args.tasks, main_lr(name, args), args.length)
    for name in args.lr_sweep_methods:
        for lr in args.lrs:
            add(name, args.lr_sweep_tasks, lr, args.length)
    for name in args.length_sweep_methods:
        for length in args.lengths:
            add(name, args.length_sweep_tasks, main_lr(name, args), length)
    return list(runs.values())


def execute(args: argparse.Namespace, workdir: str) -> tuple[list[dict[str, Any]], dict]:
    """Runs the plan, one compiled `MethodRunner` per (method, length).

    Returns:
      (result rows, setup facts for the reports).
    """
    plan = plan_runs(args)
    multi = any(lib.METHODS[r["method"]].multi_task for r in plan)
    mixture_tasks = lib.mixture_task_ids()
    start = time.time()
    planned = [(lib.METHODS[r["method"]], r["task"]) for r in plan]
    source_tasks = transfer.needed_tasks(planned)
    tasks, lengths = lib.load_tasks(
        sorted({*args.tasks, *args.lr_sweep_tasks, *args.length_sweep_tasks, *source_tasks}),
        args.pool_size,
        args.eval_examples,
        mixture_pool=args.pool_size * len(mixture_tasks) if multi else 0,
    )
    frozen = lib.load_frozen(args.model_gin, workdir, args.dropout, args.checkpoint)
    _log(f"data and model ready in {time.time() - start:.0f} s; {frozen.description}")
    sources = transfer.train_sources(
        source_tasks, args.seeds, tasks=tasks, frozen=frozen, lengths=lengths,
        settings=dict(
            length=args.length, learning_rate=args.prompt_lr, steps=args.steps,
            batch_size=args.batch_size, pool_size=args.pool_size,
        ),
        cache_dir=args.source_cache or os.path.join(args.output, "source_prompts"),
        stages=transfer.needed_stages(planned),
    )  # fmt: skip
    rows, groups = [], {}
    for run in plan:
        groups.setdefault((run["method"], run["length"]), []).append(run)
    for run_id, ((name, length), group) in enumerate(groups.items()):
        method = lib.METHODS[name]
        num_tasks = len(mixture_tasks) if method.multi_task else 1
        first = group[0]
        first_files = tuple(transfer.files_for(method, first["task"], first["seed"], sources))
        build = lambda labels, files=first_files, m=method, p=length, n=num_tasks: lib.build_module(
            frozen, m, p, labels, n, files, input_length=lengths[0]
        )
        runner = lib.MethodRunner(
            build, frozen, method.trainable_regex, lengths, method.make_optimizer()
        )
        for run in group:
            files = transfer.files_for(method, run["task"], run["seed"], sources)
            rows += _one_run(args, runner, tasks, run, mixture_tasks, f"{run_id}", files)
    setup = dict(
        model=frozen.description, model_gin=args.model_gin, input_length=lengths[0],
        target_length=lengths[1], runs=len(plan), setup_seconds=round(time.time() - start, 1),
        transfer=transfer.section(sources) if source_tasks else "",
    )  # fmt: skip
    return rows, setup


def _one_run(
    args: argparse.Namespace,
    runner: lib.MethodRunner,
    tasks: Mapping[str, lib.TaskData],
    run: Mapping[str, Any],
    mixture_tasks: Mapping[str, int],
    group_id: str,
    source_files: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Trains one run and evaluates it (each requested task, for a multi-task run)."""
    begin = time.time()
    task = tasks[run["task"]]
    multi = run["task"] == lib.MIXTURE
    steps = args.steps * (len(mixture_tasks) if multi else 1)
    labels = task.labels or tasks[args.tasks[0]].labels
    trainable = runner.initial(run["seed"], labels, tuple(source_files))
    batches = lib.run_batches(task.train, steps, args.batch_size, run["seed"])
    trained, losses = runner.train(trainable, batches, run["seed"], run["lr"])
    evaluated = args.tasks if multi else [run["task"]]
    rows = []
    for name in evaluated:
        accuracy = runner.accuracy(trained, tasks[name], mixture_tasks[name] if multi else None)
        rows.append(dict(run, task=name, accuracy=accuracy, final_loss=float(losses[-1])))
    seconds = round(time.time() - begin, 2)
    for row in rows:
        row.update(
            params=runner.count(trainable), steps=steps, seconds=seconds,
            run=f"{group_id}/{run['seed']}/{run['lr']}/{run['task']}",
            source_files=list(source_files),
        )  # fmt: skip
    _log(
        f"{run['method']:<24} P={run['length']} lr={run['lr']:<6} seed={run['seed']} "
        + " ".join(f"{r['task']}={r['accuracy']:.3f}" for r in rows)
        + f" loss={losses[-1]:.3f} {seconds:.1f}s"
    )
    return rows


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of accuracies in %."""
    values = 100.0 * np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _cell(values: Sequence[float]) -> str:
    if not len(values):
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.1f} ± {std:.1f}"


def _select(rows: Sequence[Mapping[str, Any]], **match: Any) -> list[Mapping[str, Any]]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def main_table(rows: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> str:
    """Markdown: method | trainable params | per-task mean ± std | average."""
    head = ["method", "trainable params", *args.tasks, "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in args.methods:
        method = lib.METHODS[name]
        length = args.length if method.has_length else None
        chosen = _select(rows, method=name, lr=main_lr(name, args), length=length)
        cells, means = [], []
        for task in args.tasks:
            accuracies = [r["accuracy"] for r in _select(chosen, task=task)]
            cells.append(_cell(accuracies))
            means += [mean_std(accuracies)[0]] if accuracies else []
        params = chosen[0]["params"] if chosen else 0
        lines.append(f"| {name} | {params:,} | " + " | ".join(cells) + f" | {np.mean(means):.1f} |")
    legend = [
        f"- `{name}`: `{lib.METHODS[name].gin_file or args.model_gin}` "
        f"({lib.METHODS[name].paper}{', multi-task' if lib.METHODS[name].multi_task else ''}"
        f"{_sources_note(lib.METHODS[name])})"
        for name in args.methods
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(legend)


def _sources_note(method: lib.Method) -> str:
    if not method.sources:
        return ""
    pick = f", the most similar by {method.pick_source}" if method.pick_source else ""
    pick += ", distilled into one shared prompt (source stage)" if method.source_stage else ""
    return f"; source prompts: {' / '.join(method.sources)}{pick}"


def lr_table(rows: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> str:
    """Markdown: method | params | one column per learning rate (over seeds x sweep tasks)."""
    head = ["method", "trainable params", *(f"lr {lr:g}" for lr in args.lrs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in args.lr_sweep_methods:
        chosen = [
            r for r in _select(rows, method=name, length=args.length)
            if r["task"] in args.lr_sweep_tasks
        ]  # fmt: skip
        cells = [_cell([r["accuracy"] for r in _select(chosen, lr=lr)]) for lr in args.lrs]
        params = chosen[0]["params"] if chosen else 0
        lines.append(f"| {name} | {params:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def length_table(rows: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> str:
    """Markdown: method | P | params | accuracy (over seeds x sweep tasks)."""
    lines = ["| method | P | trainable params | accuracy |", "|---|---|---|---|"]
    for name in args.length_sweep_methods:
        lr = main_lr(name, args)
        for length in args.lengths:
            chosen = [
                r for r in _select(rows, method=name, lr=lr, length=length)
                if r["task"] in args.length_sweep_tasks
            ]  # fmt: skip
            params = chosen[0]["params"] if chosen else 0
            accuracies = [r["accuracy"] for r in chosen]
            lines.append(f"| {name} | {length} | {params:,} | {_cell(accuracies)} |")
    return "\n".join(lines)


def plot_lr_sweep(rows: Sequence[Mapping[str, Any]], args: argparse.Namespace, path: str) -> None:
    """Box plot: one panel per learning rate, one box per method over seeds x tasks."""
    names = args.lr_sweep_methods
    fig, axes = plt.subplots(
        1, len(args.lrs), figsize=(3 + 0.45 * len(names) * len(args.lrs), 4.5), sharey=True,
        squeeze=False,
    )  # fmt: skip
    for axis, lr in zip(axes[0], args.lrs):
        data = [
            [100 * r["accuracy"] for r in _select(rows, method=n, lr=lr, length=args.length)
             if r["task"] in args.lr_sweep_tasks]
            for n in names
        ]  # fmt: skip
        axis.boxplot(data, tick_labels=names)
        axis.set_title(f"learning rate {lr:g}")
        axis.tick_params(axis="x", labelrotation=90)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_length_sweep(
    rows: Sequence[Mapping[str, Any]], args: argparse.Namespace, path: str
) -> None:
    """Accuracy (mean ± std over seeds x tasks) against prompt length, one line per method."""
    fig, axis = plt.subplots(figsize=(6, 4.5))
    for name in args.length_sweep_methods:
        lr = main_lr(name, args)
        stats = [
            mean_std([
                r["accuracy"] for r in _select(rows, method=name, lr=lr, length=length)
                if r["task"] in args.length_sweep_tasks
            ])
            for length in args.lengths
        ]  # fmt: skip
        means, stds = np.array(stats).T
        axis.errorbar(args.lengths, means, yerr=stds, marker="o", capsize=3, label=name)
    axis.set_xscale("log")
    axis.set_xticks(args.lengths, [str(n) for n in args.lengths])
    axis.set_xlabel("prompt length P")
    axis.set_ylabel("validation accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _describe(args: argparse.Namespace, setup: Mapping[str, Any]) -> str:
    return (
        f"Frozen model: {setup['model']} (`{args.model_gin}`). Validation accuracy (%) by rank "
        f"classification over the label strings on the first {args.eval_examples} validation "
        f"examples of each task, mean ± std (sample, ddof=1) over seeds {args.seeds}. "
        f"{args.steps} steps of batch {args.batch_size} (multi-task: {args.steps} x tasks), "
        f"inputs padded to {setup['input_length']} tokens, prompt length P={args.length} unless "
        f"swept; Adafactor at {args.prompt_lr:g} for prompts (unless swept), 1e-3 for full "
        "fine-tuning."
    )


def write_outputs(
    rows: list[dict[str, Any]], setup: dict[str, Any], args: argparse.Namespace
) -> dict[str, str]:
    """Writes table.md, results.json and the two plots into `args.output`; returns the tables."""
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"main": main_table(rows, args), "lr": lr_table(rows, args)}
    tables["length"] = length_table(rows, args)
    lr_note = (
        f"Learning-rate sweep on {', '.join(args.lr_sweep_tasks)} (P={args.length}, accuracy over "
        "seeds x tasks). Full fine-tuning is not swept: rate 1 on every weight is meaningless."
    )
    length_note = (
        f"Prompt-length sweep on {', '.join(args.length_sweep_tasks)} (each method's main "
        "learning rate, accuracy over seeds x tasks)."
    )
    text = (
        f"# Method comparison\n\n{_describe(args, setup)}\n\n{tables['main']}\n\n"
        f"## Learning rate\n\n{lr_note}\n\n{tables['lr']}\n\n"
        f"## Prompt length\n\n{length_note}\n\n{tables['length']}\n"
    )
    if setup.get("transfer"):
        text += f"\n## Prompt transfer\n\n{setup['transfer']}\n"
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(dict(setup=setup, runs=rows), indent=1) + "\n")
    if args.lr_sweep_methods:  # (a transfer-only comparison sweeps nothing)
        plot_lr_sweep(rows, args, str(out / "lr_sweep.png"))
    if args.length_sweep_methods:
        plot_length_sweep(rows, args, str(out / "length_sweep.png"))
    return dict(tables, text=text)


def machine() -> str:
    """CPU model, cores and the jax version, for the report."""
    import jax  # noqa: PLC0415

    model = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}, "
        f"1-minute load {load:.1f} at the end"
    )


def write_docs(text: str, args: argparse.Namespace, command: str, seconds: float) -> None:
    """Writes the `--docs` page: tables, the plots (copied beside it), command, machine, time."""
    page = pathlib.Path(args.docs)
    images = page.with_suffix("")  # docs/results.md -> docs/results/
    images.mkdir(parents=True, exist_ok=True)
    plots = [
        n for n in ("lr_sweep.png", "length_sweep.png") if (pathlib.Path(args.output) / n).is_file()
    ]
    for name in plots:
        shutil.copyfile(pathlib.Path(args.output) / name, images / name)
    link = lambda name: f"![{name}]({images.name}/{name})" if name in plots else ""
    body = text.replace("# Method comparison\n", "# Results: method comparison\n", 1)
    body = body.replace("## Prompt length\n", f"{link('lr_sweep.png')}\n\n## Prompt length\n", 1)
    page.write_text(
        f"{body}\n{link('length_sweep.png')}\n\n## How this page was made\n\n"
        f"```sh\n{command}\n```\n\nMachine: {machine()}. Total time: {seconds / 60:.1f} min "
        f"({seconds:.0f} s). Every run is in `{args.output}/results.json`.\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the comparison and writes the reports."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join(["python", "tools/compare_methods.py", *argv])
    start = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        rows, setup = execute(args, workdir)
    setup.update(command=command, machine=machine(), args=vars(args))
    seconds = time.time() - start
    setup["total_seconds"] = round(seconds, 1)
    outputs = write_outputs(rows, setup, args)
    if args.docs:
        write_docs(outputs["text"], args, command, seconds)
    print(outputs["main"])
    _log(f"{len(rows)} results in {seconds:.0f} s; written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
