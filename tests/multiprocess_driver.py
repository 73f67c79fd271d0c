"""Runs several gin entry points one after another in each process of a multi-process test.

    python -m tests.multiprocess_driver train <gin flags> --- infer <gin flags> \
        --coordinator_address=127.0.0.1:PORT --process_count=2 --process_index=I

The process joins the run once (T5X's flags, anywhere on the line), then runs `trainer.train` and
`inference.infer` through `gin_utils.run_main` as `pt-train` and `pt-infer` do, sparing the
test a second start of every process.
"""

import sys

import gin

from prompt_tuning.parallel import distributed
from prompt_tuning.predict import inference
from prompt_tuning.train import gin_utils, trainer
from prompt_tuning.train.__main__ import REQUIRED_MACROS as TRAIN_MACROS

ENTRY_POINTS = {
    "train": (trainer.train, TRAIN_MACROS, "config.gin"),
    "infer": (inference.infer, ("MODEL", "INFER_OUTPUT_PATH"), None),
}


def main(argv: list[str]) -> None:
    flags, argv = gin_utils.split_process_flags(argv)
    distributed.initialize(**flags)
    commands, current = [], []
    for arg in [*argv, "---"]:
        if arg == "---":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    for name, *args in commands:
        fn, required, config = ENTRY_POINTS[name]
        gin.clear_config()
        gin_utils.run_main(fn, args, required, config)


if __name__ == "__main__":
    main(sys.argv[1:])
