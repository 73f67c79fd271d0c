"""`python -m prompt_tuning.infer`: writes a tuned prompt's predictions as JSON lines.

    python -m prompt_tuning.infer \
      --gin_file=gin_configs/models/t5_1_1_tiny.gin \
      --gin_file=gin_configs/prompts/prompt_tuning_random_uniform.gin \
      --gin_file=gin_configs/runs/prompt_infer.gin \
      --gin.MIXTURE_OR_TASK_NAME="'builtin_keyword'" \
      --gin.TASK_FEATURE_LENGTHS="{'inputs': 128, 'targets': 8}" \
      --gin.PROMPT_FILE="'/tmp/tiny_prompt/prompts/best.npy'" \
      --gin.INFER_OUTPUT_PATH="'/tmp/tiny_prompt/predictions.jsonl'"

One JSON object per example: `inputs`, `prediction`, `target` (when present), `score` (when
INFER_SCORE is "prediction" or "target"); see `prompt_tuning.predict.inference.infer`.
"""

from collections.abc import Sequence

from prompt_tuning.model_dir import CONFIG_INFER_GIN
from prompt_tuning.predict import inference
from prompt_tuning.train import gin_utils

REQUIRED_MACROS = ("MODEL", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "INFER_OUTPUT_PATH")


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the gin flags and runs `inference.infer`; configuration errors exit with code 2.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).
    """
    return gin_utils.main(inference.infer, argv, REQUIRED_MACROS, config_filename=CONFIG_INFER_GIN)


def console_main() -> None:
    """Console-script entry point (`pt-infer`): `main` on `sys.argv`."""
    main()


if __name__ == "__main__":
    console_main()
