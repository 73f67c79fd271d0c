"""The demo on the embedded tiny pretrained T5, shortened: the trained prompt beats no prompt.

The validation examples are held out: the built-in task's validation stream is disjoint from its
train stream and from the pretraining corpus's streams (`tasks.pretraining`).
"""

import json

import numpy as np

from tools import demo

TASK = "builtin_sentiment"


def test_short_demo_prompt_beats_no_prompt_and_leaves_a_run(tmp_path, capsys):
    model_dir = tmp_path / "demo"
    results = demo.main(
        ["--model_dir", str(model_dir), "--train_steps", "2900", "--num_examples", "200"]
    )
    before, after = results["no_prompt"], results["trained_prompt"]
    ceiling = results["text_prefix"]
    # Rank classification: the frozen model alone is near chance (2 labels), the prompt is not.
    assert abs(before[f"{TASK}/rank_accuracy"] - 50) < 20  # percent, as T5's metrics
    assert after[f"{TASK}/rank_accuracy"] >= before[f"{TASK}/rank_accuracy"] + 20
    # Greedy decoding: without the prefix the model continues the text instead of labelling it.
    assert before[f"{TASK}/accuracy"] < 20
    assert after[f"{TASK}/accuracy"] >= 70
    assert ceiling[f"{TASK}_prefixed/accuracy"] >= 90
    # The run is a normal MODEL_DIR; the table is printed and saved.
    assert (model_dir / "prompts" / "step_2900.npy").exists()
    assert np.load(model_dir / "prompts" / "step_2900.npy").shape == (20, 128)
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(x["step"] for x in lines) == 2900  # 400 steps from the checkpoint's 2,500
    assert json.loads((model_dir / "demo.json").read_text()) == results
    out = capsys.readouterr().out
    table = (model_dir / "demo.md").read_text()
    assert table.splitlines()[0] in out
    assert f"| {after[f'{TASK}/accuracy']:.1f} |" in table
