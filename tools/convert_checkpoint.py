"""Convert a frozen T5 checkpoint between the T5X and Hugging Face layouts.

    python tools/convert_checkpoint.py --input /ckpts/t5_1_1_small/checkpoint_1000000 \
        --output /tmp/t5_small_hf --to hf --transformers_version 4

The input is anything `prompt_tuning.t5.checkpoints.load_checkpoint` reads (a Hugging Face folder,
a legacy T5X `checkpoint_N/` folder or an orbax/OCDBT T5X checkpoint); only the model parameters
are read. `--to hf` writes `config.json` + `model.safetensors` that
`transformers.T5ForConditionalGeneration.from_pretrained` loads (`--transformers_version 4`
writes T5 1.1's untied `lm_head`, 5 the `scale_decoder_outputs` layout); `--to t5x` writes a legacy
T5X checkpoint folder (name it `checkpoint_<step>`; `--step` is recorded in it).

What each layout cannot hold:
- a legacy T5X checkpoint has no config, and tied logits are read back as scaled by H^-0.5 (T5X's
  convention); a tied model whose logits are *not* scaled (transformers 5's T5 1.1 layout) is
  therefore written untied, with `decoder/logits_dense/kernel` = the embedding transposed, which
  computes the same logits;
- a Hugging Face T5 has no prompt: the `encoder/prompt/...` parameters of a prompt-tuned T5X
  checkpoint are not written (export them with tools/prompt_io.py or
  `t5.checkpoints.read_variable`).
Architecture details that shapes cannot tell (relative attention max distance, layer-norm epsilon)
take `T5Config`'s defaults when the input is a T5X checkpoint.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python tools/convert_checkpoint.py`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from prompt_tuning.t5 import conversion  # noqa: E402
from tools import _common  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="HF folder or T5X checkpoint")
    parser.add_argument("--output", required=True, help="folder to create (must not exist)")
    parser.add_argument("--to", required=True, choices=("hf", "t5x"), help="output layout")
    parser.add_argument(
        "--transformers_version", type=int, default=4, choices=(4, 5), help="HF layout (--to hf)"
    )
    parser.add_argument("--step", type=int, default=0, help="step recorded (--to t5x)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> conversion.ConversionResult:
    """Runs the tool.

    Args:
      argv: command-line arguments without the program name (default `sys.argv[1:]`).

    Returns:
      The `conversion.ConversionResult`.

    Raises:
      CheckpointError: an unreadable input or an existing output folder.
    """
    args = parse_args(argv)
    result = conversion.convert(
        args.input, args.output, args.to, args.transformers_version, args.step
    )
    c = result.config
    print(
        f"Wrote {args.to} checkpoint {result.output}: vocab {c.vocab_size}, H {c.emb_dim}, "
        f"{c.num_encoder_layers}+{c.num_decoder_layers} layers, {c.num_heads} heads, "
        f"MLP {c.mlp_dim} {'/'.join(c.mlp_activations)}, "
        f"{'tied' if c.logits_via_embedding else 'untied'} logits."
    )
    if result.dropped:
        print(f"Not written (a Hugging Face T5 has no prompt): {', '.join(result.dropped)}.")
    if result.untied:
        print("Tied, unscaled logits were written as an explicit decoder/logits_dense kernel.")
    return result


if __name__ == "__main__":
    _common.cli(main)
