"""`python -m prompt_tuning.export` (`pt-export`): a trained prompt as a Hugging Face PEFT adapter.

    pt-export --prompt /tmp/tiny_prompt --format=peft --base_model /tmp/t5_tiny_hf \
      --output /tmp/tiny_adapter

`--prompt` is a training run's MODEL_DIR (its prompts/best, else its latest prompts/step_<N>) or a
prompt file; `--base_model` the frozen model's Hugging Face folder or hub name (written into the
adapter's base_model_name_or_path); `--output` a new folder. A multi-task prompt [N, P, H] becomes
one adapter per task (`--task_names`, else task_0 ...). Bad input exits with code 2 and a message
naming the problem (`prompt_tuning.export.exporter`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prompt_tuning.export import exporter


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        prog="pt-export", description="Export a trained prompt as a PEFT prompt-tuning adapter."
    )
    parser.add_argument("--prompt", required=True, help="a MODEL_DIR or a prompt file (.npy)")
    parser.add_argument("--format", default="peft", choices=exporter.FORMATS)
    parser.add_argument(
        "--base_model", required=True, help="the frozen model's Hugging Face folder or hub name"
    )
    parser.add_argument("--output", required=True, help="a new (or empty) folder")
    parser.add_argument(
        "--task_names",
        default=None,
        help="comma-separated names of a multi-task prompt's tasks, in task-id order",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list:
    """Runs the export; returns the written adapter folders."""
    args = parse_args(argv)
    names = args.task_names.split(",") if args.task_names else None
    written = exporter.export_peft(args.prompt, args.base_model, args.output, names)
    for folder in written:
        print(f"Wrote the PEFT prompt-tuning adapter {folder}")
    return written


def console_main() -> None:
    """Console-script entry point (`pt-export`): input errors print `error: ...`, exit code 2."""
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    console_main()
