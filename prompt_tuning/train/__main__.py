"""`python -m prompt_tuning.train`: prompt tuning with gin configs (T5X-style flags).

    python -m prompt_tuning.train --gin_file=gin_configs/runs/smoke.gin \
        --gin.MODEL_DIR="'runs/demo'"

Flags: `--gin_file` (repeatable), `--gin.NAME=VALUE`, `--gin_bindings`, `--gin_search_paths` (see
`prompt_tuning.train.gin_utils`). The gin files bind `trainer.train`; this entry point only parses
them, checks the required macros and calls it. Restarting the same command resumes the run.
"""

from prompt_tuning.train import gin_utils, trainer

REQUIRED_MACROS = (
    "MODEL",
    "MODEL_DIR",
    "MIXTURE_OR_TASK_NAME",
    "TASK_FEATURE_LENGTHS",
    "TRAIN_STEPS",
    "BATCH_SIZE",
)


def console_main() -> None:
    """Console-script entry point (`pt-train`)."""
    gin_utils.main(trainer.train, required_macros=REQUIRED_MACROS)


if __name__ == "__main__":
    console_main()
