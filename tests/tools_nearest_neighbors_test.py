"""tools/nearest_neighbors.py: planted neighbours, padding rows, labels, a tiny run's prompt."""

import numpy as np
import pytest
import sentencepiece

from prompt_tuning.analysis import neighbors
from prompt_tuning.analysis.errors import AnalysisError
from prompt_tuning.model_dir import ModelDirError
from prompt_tuning.t5 import checkpoints as t5_checkpoints
from tasks import vocabularies
from tests.tools_fixtures import frozen_checkpoint, tiny_run  # noqa: F401 (pytest fixtures)
from tools import nearest_neighbors


def _cosine_top_k(prompt: np.ndarray, table: np.ndarray, k: int) -> list[list[int]]:
    """Top-k ids per row by cosine similarity, one dot product at a time (the reference)."""
    out = []
    for row in prompt:
        sims = [float(np.dot(row, e) / (np.linalg.norm(row) * np.linalg.norm(e))) for e in table]
        out.append(sorted(range(len(table)), key=lambda i: (-sims[i], i))[:k])
    return out


def test_planted_neighbours_rank_first_and_padding_rows_are_ignored():
    rng = np.random.default_rng(0)
    vocab, pad, width = 50, 6, 16
    embedding = rng.normal(size=(vocab + pad, width))
    prompt = rng.normal(size=(5, width))
    planted = {0: 17, 3: 42}  # position -> token
    for i, j in planted.items():
        prompt[i] = 2.0 * embedding[j] + 0.01 * rng.normal(size=width)
    prompt[4] = 3.0 * embedding[vocab + 2]  # a padding row: must not be reported
    ids, sims = neighbors.nearest_neighbors(prompt, embedding, vocab, top_k=4)
    for i, j in planted.items():
        assert ids[i, 0] == j
        assert sims[i, 0] == pytest.approx(1.0, abs=1e-3)
    assert (ids < vocab).all()
    assert ids.tolist() == _cosine_top_k(prompt, embedding[:vocab], 4)
    want = prompt[1] @ embedding[ids[1, 2]]
    want /= np.linalg.norm(prompt[1]) * np.linalg.norm(embedding[ids[1, 2]])
    assert sims[1, 2] == pytest.approx(want)
    assert (np.diff(sims, axis=1) <= 0).all()


def test_mismatched_widths_and_short_embedding_are_named():
    with pytest.raises(AnalysisError, match="width 8 but the embedding has 16"):
        neighbors.nearest_neighbors(np.ones((2, 8)), np.ones((10, 16)), 10, 3)
    with pytest.raises(AnalysisError, match="10 rows but the vocabulary 12"):
        neighbors.nearest_neighbors(np.ones((2, 16)), np.ones((10, 16)), 12, 3)


def test_extra_ids_are_numbered_from_the_end_as_in_t5():
    pieces = neighbors.vocabulary_pieces(vocabularies.TINY_SPM_PATH, extra_ids=3)
    processor = sentencepiece.SentencePieceProcessor(model_file=vocabularies.TINY_SPM_PATH)
    size = processor.get_piece_size()
    assert len(pieces) == size + 3
    assert pieces[:3] == [processor.id_to_piece(i) for i in range(3)]
    assert pieces[-1] == "<extra_id_0>" and pieces[size] == "<extra_id_2>"


def test_cli_planted_label_persists_at_its_positions(frozen_checkpoint, tmp_path):  # noqa: F811
    embedding = t5_checkpoints.read_variable(frozen_checkpoint, "token_embedder/embedding")
    processor = sentencepiece.SentencePieceProcessor(model_file=vocabularies.TINY_SPM_PATH)
    (yes,) = [i for i in processor.encode("yes") if processor.id_to_piece(i) != "\u2581"]
    rng = np.random.default_rng(1)
    prompt = rng.normal(size=(4, embedding.shape[1])).astype(np.float32)
    prompt[1] = 2.0 * embedding[yes] + 0.01 * rng.normal(size=embedding.shape[1])
    prompt[3] = 0.5 * embedding[yes]
    np.save(tmp_path / "p.npy", prompt)
    output = tmp_path / "nn.md"
    result = nearest_neighbors.main(
        [
            f"--prompt={tmp_path / 'p.npy'}",
            f"--checkpoint={frozen_checkpoint}",
            "--labels=yes,no",
            "--top_k=3",
            f"--output={output}",
        ]
    )
    assert result.ids[1, 0] == yes and result.ids[3, 0] == yes
    assert result.pieces[1][0] == processor.id_to_piece(yes)
    assert result.labels["yes"] == [1, 3]
    no_ids = [i for i in processor.encode("no") if processor.id_to_piece(i) != "\u2581"]
    assert result.labels["no"] == [p for p in range(4) if set(result.ids[p]) & set(no_ids)]
    text = output.read_text()
    assert text == result.markdown
    assert "| yes | yes | 1, 3 |" in text
    assert text.count("\n| ") == 1 + 4 + 1 + 2  # two headers, 4 positions, 2 labels


def test_run_defaults_latest_prompt_checkpoint_and_task_labels(tiny_run, frozen_checkpoint):  # noqa: F811
    result = nearest_neighbors.main([f"--model_dir={tiny_run}", "--top_k=4"])
    assert result.prompt_path == tiny_run / "prompts" / "step_6.npy"
    assert result.output == tiny_run / "nearest_neighbors.md" and result.output.exists()
    assert sorted(result.labels) == ["no", "yes"]  # tasks.label_strings("builtin_keyword")
    embedding = t5_checkpoints.read_variable(frozen_checkpoint, "token_embedder/embedding")
    prompt = np.load(tiny_run / "prompts" / "step_6.npy")
    assert result.ids.tolist() == _cosine_top_k(prompt, embedding, 4)
    earlier = nearest_neighbors.main([f"--model_dir={tiny_run}", "--step=2", "--top_k=4"])
    assert earlier.prompt_path.name == "step_2.npy"
    assert earlier.ids.tolist() == _cosine_top_k(np.load(earlier.prompt_path), embedding, 4)
    with pytest.raises(ModelDirError, match=r"no prompt for step 7; saved steps: \[2, 4, 6\]"):
        nearest_neighbors.main([f"--model_dir={tiny_run}", "--step=7"])


def test_multi_task_prompts_need_a_task_id_and_instance_dependent_ones_are_refused(tmp_path):
    table = np.random.default_rng(0).normal(size=(3, 4, 8)).astype(np.float32)
    np.save(tmp_path / "tasks.npy", table)
    np.testing.assert_array_equal(neighbors.prompt_matrix(tmp_path / "tasks.npy", 2), table[2])
    with pytest.raises(AnalysisError, match=r"3 task prompts .* --task_id 0\.\.2"):
        neighbors.prompt_matrix(tmp_path / "tasks.npy", None)
    np.savez(tmp_path / "idpg.npz", prompt=table[0], **{"generator/up_kernel": table})
    with pytest.raises(AnalysisError, match="no fixed \\[P, H\\] prompt"):
        neighbors.prompt_matrix(tmp_path / "idpg.npz", None)


def test_a_peft_adapter_folder_is_read_as_its_prompt_embedding(frozen_checkpoint, tmp_path):  # noqa: F811
    pytest.importorskip("peft", reason="the PEFT reference: `pip install peft` (test extra)")
    from tests.export_peft_test import _peft_saved  # noqa: PLC0415

    embedding = t5_checkpoints.read_variable(frozen_checkpoint, "token_embedder/embedding")
    folder, weight = _peft_saved(tmp_path, embedding.shape[1], length=3)
    argv = [f"--prompt={folder}", f"--checkpoint={frozen_checkpoint}", "--top_k=3"]
    result = nearest_neighbors.main(argv)
    args = nearest_neighbors.parse_args(argv)
    vocab = len(neighbors.vocabulary_pieces(args.spm, args.extra_ids))
    assert result.ids.tolist() == _cosine_top_k(weight, embedding[:vocab], 3)
