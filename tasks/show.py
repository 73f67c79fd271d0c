"""Prints a task's examples as the model sees them: strings and token ids after preprocessing.

    python -m tasks.show builtin_sentiment --split validation -n 3
    python -m tasks.show taskless_glue_rte_v002 --feature_lengths inputs=256,targets=8

For every example and every output feature it prints the text before tokenisation (when the task
keeps it), the token ids after preprocessing, trimming to `--feature_lengths` and EOS, and those ids
decoded back; other features (e.g. `task_ids`) are printed as they are. An unknown name exits
with status 2 and lists the closest registered task and mixture names.
"""

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import seqio


class UnknownTaskError(KeyError):
    """No task or mixture is registered under the requested name."""


def parse_feature_lengths(text: str) -> dict[str, int]:
    """Parses `inputs=128,targets=16` into `{"inputs": 128, "targets": 16}`.

    Raises:
      ValueError: a part is not `name=positive integer`.
    """
    lengths = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if not name or not value.isdigit() or int(value) <= 0:
            raise ValueError(
                f"Bad --feature_lengths part {part!r}: write name=length pairs separated by "
                "commas, e.g. inputs=128,targets=16."
            )
        lengths[name.strip()] = int(value)
    return lengths


def find_provider(name: str) -> seqio.Task | seqio.Mixture:
    """The registered task or mixture called `name`.

    Raises:
      UnknownTaskError: nothing is registered under `name`; the message lists the closest names.
    """
    names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    if name not in names:
        close = difflib.get_close_matches(name, names, n=8, cutoff=0.5)
        hint = f"Closest names: {', '.join(close)}." if close else "No similar name is registered."
        raise UnknownTaskError(f"No task or mixture named {name!r} is registered. {hint}")
    return seqio.get_mixture_or_task(name)


def format_example(
    example: Mapping[str, np.ndarray], output_features: Mapping[str, seqio.Feature]
) -> list[str]:
    """The lines that describe one preprocessed example."""
    lines = []
    for key, feature in output_features.items():
        if key not in example:
            continue
        value = np.asarray(example[key])
        if value.ndim == 0:
            lines.append(f"  {key}: {value.item()}")
            continue
        pretokenized = example.get(f"{key}_pretokenized")
        if pretokenized is not None:
            lines.append(f"  {key} (text): {_text(pretokenized)!r}")
        ids = [int(i) for i in value.reshape(-1)]
        lines.append(f"  {key} (ids, {len(ids)}): {ids}")
        lines.append(f"  {key} (decoded): {feature.vocabulary.decode(ids)!r}")
    return lines


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def show(name: str, split: str, num_examples: int, feature_lengths: Mapping[str, int]) -> str:
    """The printout of `num_examples` examples of one split of a task or mixture."""
    provider = find_provider(name)
    kwargs = dict(sequence_length=dict(feature_lengths), split=split, shuffle=False)
    kwargs.update(num_epochs=1, try_in_mem_cache=False)
    if isinstance(provider, seqio.Mixture):
        kwargs.update(copy_pretokenized=True)
    dataset = provider.get_dataset(**kwargs)
    header = f"{name} [{split}], feature lengths {dict(feature_lengths)}"
    lines = [header]
    for index, example in enumerate(dataset.take(num_examples).as_numpy_iterator()):
        lines.append(f"example {index}:")
        lines.extend(format_example(example, provider.output_features))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tasks.show", description=__doc__.split("\n")[0]
    )
    parser.add_argument("task", help="a registered task or mixture name")
    parser.add_argument("--split", default="validation")
    parser.add_argument("-n", "--num_examples", type=int, default=3)
    parser.add_argument("--feature_lengths", default="inputs=128,targets=16")
    args = parser.parse_args(argv)
    try:
        lengths = parse_feature_lengths(args.feature_lengths)
    except ValueError as error:
        parser.error(str(error))
    import tasks  # noqa: F401  (registers every task)

    try:
        print(show(args.task, args.split, args.num_examples, lengths))
    except UnknownTaskError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
