"""Tests of SPoT's task similarity (`prompt_tuning.analysis.similarity`) and its CLI.

The expected values are computed by hand from the paper's definitions (Vu et al., 2022, 3.2):
cosine of the mean-pooled prompts, and the mean cosine over all L1 x L2 token pairs.
"""

import math
import pathlib

import numpy as np
import pytest

from prompt_tuning.analysis import similarity
from prompt_tuning.prompts import peft_format
from prompt_tuning.prompts.files import PromptFileError
from tools import prompt_similarity

R2 = math.sqrt(2.0)
A = np.array([[1.0, 0.0], [0.0, 1.0]])  # mean [0.5, 0.5]
B = np.array([[1.0, 1.0], [1.0, -1.0]])  # mean [1, 0]


def test_cosine_of_average_tokens_by_hand():
    # cos([0.5, 0.5], [1, 0]) = 0.5 / (sqrt(0.5) * 1) = 1/sqrt(2)
    assert similarity.cosine_average(A, B) == pytest.approx(1 / R2)
    # L1 = 1, L2 = 2: mean of [[4, 3], [0, 1]] is [2, 2]; cos([3, 4], [2, 2]) = 14 / (5 * 2 sqrt 2)
    assert similarity.cosine_average([[3.0, 4.0]], [[4.0, 3.0], [0.0, 1.0]]) == pytest.approx(
        14 / (10 * R2)
    )


def test_per_token_average_cosine_by_hand():
    # cos(a1, b1) = cos(a1, b2) = cos(a2, b1) = 1/sqrt2, cos(a2, b2) = -1/sqrt2 -> sum sqrt2, / 4
    assert similarity.per_token_cosine(A, B) == pytest.approx(R2 / 4)
    # cos([3, 4], [4, 3]) = 24/25, cos([3, 4], [0, 1]) = 4/5 -> mean 0.88
    assert similarity.per_token_cosine([[3.0, 4.0]], [[4.0, 3.0], [0.0, 1.0]]) == pytest.approx(
        0.88
    )
    # A prompt with itself: per-token is not 1 (off-diagonal pairs), average-token is.
    assert similarity.per_token_cosine(A, A) == pytest.approx(0.5)
    assert similarity.cosine_average(A, A) == pytest.approx(1.0)


def test_measures_ignore_scale_and_zero_rows_count_as_zero():
    assert similarity.per_token_cosine(3 * A, 0.5 * B) == pytest.approx(R2 / 4)
    # [[1, 0], [0, 0]] vs [[1, 0]]: cosines 1 and 0 (zero row) -> 0.5
    assert similarity.per_token_cosine([[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0]]) == 0.5


def test_matrix_and_ranking():
    sources = {"up": [[0.0, 1.0]], "diag": [[1.0, 1.0]], "back": [[-1.0, 0.0]]}
    ranked = similarity.rank_sources(np.array([[1.0, 0.0]]), sources)
    assert [name for name, _ in ranked] == ["diag", "up", "back"]
    assert [v for _, v in ranked] == pytest.approx([1 / R2, 0.0, -1.0])
    names, matrix = similarity.similarity_matrix({"a": A, "b": B}, similarity.PER_TOKEN_COSINE)
    assert names == ["a", "b"]
    np.testing.assert_allclose(matrix, [[0.5, R2 / 4], [R2 / 4, 0.5]])


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="model dims"):
        similarity.cosine_average(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="Unknown similarity measure"):
        similarity.similarity(A, B, "euclid")
    with pytest.raises(ValueError, match="at least one source"):
        similarity.rank_sources(A, {})


def test_reads_files_run_folders_and_adapters(tmp_path):
    plain = tmp_path / "plain.npy"
    np.save(plain, A)
    np.testing.assert_array_equal(similarity.read_task_embedding(plain), A)
    multi = tmp_path / "multi.npy"
    np.save(multi, np.stack([A, B]))
    np.testing.assert_array_equal(similarity.read_task_embedding(multi, task_id=1), B)
    with pytest.raises(PromptFileError, match="task id in"):
        similarity.read_task_embedding(multi)
    params = tmp_path / "params.npz"
    np.savez(params, prompt=A)
    with pytest.raises(PromptFileError, match="no single matrix"):
        similarity.read_task_embedding(params)
    run = tmp_path / "run"
    (run / "prompts").mkdir(parents=True)
    np.save(run / "prompts" / "step_5.npy", A)
    np.save(run / "prompts" / "step_10.npy", B)
    np.testing.assert_array_equal(similarity.read_task_embedding(run), B)  # latest
    np.testing.assert_array_equal(similarity.read_task_embedding(run, step=5), A)
    with pytest.raises(PromptFileError, match=r"exported steps: \[5, 10\]"):
        similarity.read_task_embedding(run, step=7)
    np.save(run / "prompts" / "best.npy", 2 * A)
    np.testing.assert_array_equal(similarity.read_task_embedding(run), 2 * A)
    adapter = tmp_path / "adapter"
    config = peft_format.adapter_config(2, 2, "t5-tiny")
    peft_format.write_adapter(adapter, B.astype(np.float32), config)
    np.testing.assert_array_equal(similarity.read_task_embedding(adapter), B)


def _png_ok(path: pathlib.Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_cli_ranks_sources_and_draws_the_heat_map(tmp_path, capsys):
    np.save(tmp_path / "target.npy", np.array([[1.0, 0.0]]))
    np.save(tmp_path / "near.npy", np.array([[1.0, 1.0], [1.0, 0.0]]))
    np.save(tmp_path / "far.npy", np.array([[-1.0, 0.2]]))
    argv = [
        f"t={tmp_path / 'target.npy'}", str(tmp_path / "near.npy"), str(tmp_path / "far.npy"),
        "--target", "t", "--measure", "per_token_cosine",
        "--heatmap", str(tmp_path / "map.png"), "--output", str(tmp_path / "sim.md"),
    ]  # fmt: skip
    assert prompt_similarity.main(argv) == 0
    text = capsys.readouterr().out
    assert text == (tmp_path / "sim.md").read_text()
    ranking = text.split("## Sources for t (by per_token_cosine)")[1].split("##")[0]
    rows = [line.split("|")[1:5] for line in ranking.splitlines() if line.startswith("| 1") or
            line.startswith("| 2")]  # fmt: skip
    # near: per-token mean of cos 1/sqrt2 and 1; average-token cos([1, 0], [1, 0.5]).
    assert [r[1].strip() for r in rows] == ["near", "far"]
    assert float(rows[0][2]) == pytest.approx((1 / R2 + 1) / 2, abs=5e-4)
    assert float(rows[0][3]) == pytest.approx(1 / math.sqrt(1.25), abs=5e-4)
    assert _png_ok(tmp_path / "map.png")


def test_cli_errors(tmp_path, capsys):
    np.save(tmp_path / "a.npy", A)
    assert prompt_similarity.main([str(tmp_path / "a.npy"), str(tmp_path / "a.npy")]) == 2
    assert "named 'a'" in capsys.readouterr().err
    assert prompt_similarity.main([str(tmp_path / "a.npy"), f"x={tmp_path / 'nope.npy'}"]) == 2
    assert "nope.npy" in capsys.readouterr().err
    assert similarity.parse_spec("m=/x/multi.npy:3") == ("m", "/x/multi.npy", 3)
    assert similarity.parse_spec("/x/multi.npy:3") == ("multi:3", "/x/multi.npy", 3)
