"""`python -m prompt_tuning.eval`: evaluates a tuned prompt, a prompt ensemble or a training run.

    python -m prompt_tuning.eval \
      --gin_file=gin_configs/models/t5_1_1_tiny.gin \
      --gin_file=gin_configs/prompts/prompt_tuning_random_uniform.gin \
      --gin_file=gin_configs/runs/prompt_eval.gin \
      --gin.MIXTURE_OR_TASK_NAME="'builtin_keyword'" \
      --gin.TASK_FEATURE_LENGTHS="{'inputs': 128, 'targets': 8}" \
      --gin.MODEL_DIR="'/tmp/tiny_prompt'" --gin.CHECKPOINT="'best'"

Metrics are printed and written to EVAL_OUTPUT_DIR (default MODEL_DIR/eval) as
`metrics_<split>.json`; see `prompt_tuning.predict.inference.evaluate`.
"""

from collections.abc import Sequence

from prompt_tuning.model_dir import CONFIG_EVAL_GIN
from prompt_tuning.predict import inference
from prompt_tuning.train import gin_utils

REQUIRED_MACROS = ("MODEL", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Parses the gin flags and runs `inference.evaluate`; configuration errors exit with code 2.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).
    """
    return gin_utils.main(
        inference.evaluate, argv, REQUIRED_MACROS, config_filename=CONFIG_EVAL_GIN
    )


def console_main() -> None:
    """Console-script entry point (`pt-eval`): `main` on `sys.argv`."""
    main()


if __name__ == "__main__":
    console_main()
