"""`python -m prompt_tuning.serve` (`pt-serve`): serves a folder of prompts over one frozen model.

    python -m prompt_tuning.serve \
      --gin_file=gin_configs/models/t5_1_1_tiny_pretrained.gin \
      --gin_file=gin_configs/runs/serve.gin \
      --gin.PROMPT_DIR="'/tmp/prompts'" --gin.PORT=8000

PROMPT_DIR holds `<task>.npy` prompts [P, H] and/or training runs (MODEL_DIRs), each served under
its name. See gin_configs/runs/serve.gin for every macro and README.md ("Serving") for the API.
"""

import logging
from collections.abc import Sequence

from prompt_tuning.serve import server
from prompt_tuning.train import gin_utils

REQUIRED_MACROS = ("MODEL", "VOCABULARY")


def main(argv: Sequence[str] | None = None) -> None:
    """Parses the gin flags and runs `server.serve`; configuration errors exit with code 2.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    gin_utils.main(server.serve, argv, REQUIRED_MACROS, config_filename=None)


def console_main() -> None:
    """Console-script entry point (`pt-serve`)."""
    main()


if __name__ == "__main__":
    console_main()
