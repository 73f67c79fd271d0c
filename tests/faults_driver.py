"""Runs an entry point for the preemption tests with an observable point to signal at.

    python -m tests.faults_driver <train|eval|infer> [--hold_save_after=N] <its flags>

`--hold_save_after=N` holds every checkpoint save of a step above N just before orbax's final
rename (a save in progress: the temporary folder written, the step not yet committed) and prints
`HOLDING SAVE <step>`; the test then sends a second signal. Every batch boundary of an
evaluation or inference run prints `BATCH <n>` before it checks for a stop.
"""

import sys
import threading

from orbax.checkpoint._src.path import atomicity

from prompt_tuning import eval as eval_main
from prompt_tuning import infer as infer_main
from prompt_tuning.faults import batches
from prompt_tuning.train import __main__ as train_main


def _hold_saves_after(step: int) -> None:
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def held(self):
        name = self._final_path.name
        if name.isdigit() and int(name) > step:
            print(f"HOLDING SAVE {name}", flush=True)
            threading.Event().wait()  # until the second signal ends the process
        await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = held


def _show_batches() -> None:
    boundary, count = batches.batch_boundary, [0]

    def shown() -> None:
        count[0] += 1
        print(f"BATCH {count[0]}", flush=True)
        boundary()

    batches.batch_boundary = shown


def main(argv: list[str]) -> None:
    name, *args = argv
    for arg in list(args):
        if arg.startswith("--hold_save_after="):
            _hold_saves_after(int(arg.split("=", 1)[1]))
            args.remove(arg)
    _show_batches()
    sys.argv = [name, *args]
    if name == "train":
        train_main.console_main()
    else:
        (eval_main if name == "eval" else infer_main).main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
