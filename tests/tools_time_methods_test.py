"""tools/time_methods.py on a tiny random T5: one timed run per method, counts, refusals."""

import pytest

from tests.tools_compare_methods_test import MODEL_GIN, H
from tools import time_methods


def test_times_each_method_and_prints_its_trainable_count(capsys):
    argv = [
        "--model_gin", MODEL_GIN, "--methods", "pt_random_uniform", "--length", "4",
        "--steps", "2", "--batch_size", "2", "--repeats", "2", "--pool_size", "8",
    ]  # fmt: skip
    assert time_methods.main(argv) == 0
    out = capsys.readouterr().out
    (line,) = [row for row in out.splitlines() if row.startswith("pt_random_uniform:")]
    assert f"{4 * H:,} trainable" in line  # Lester et al.: P x H
    runs = line.split("(runs: ", 1)[1].rstrip(")").split(", ")
    assert len(runs) == 2 and all(float(r) > 0 for r in runs)  # --repeats timed runs


def test_a_transfer_method_is_refused_with_the_reason(capsys):
    with pytest.raises(SystemExit):
        time_methods.main(["--methods", "spot_topic"])
    assert "without sources" in capsys.readouterr().err
