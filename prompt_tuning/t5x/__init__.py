"""Our prompts under the real T5X binaries (`python -m t5x.train`, `t5x.eval`, `t5x.infer`).

`network.T5XEncoderDecoder` is the module T5X's `models.EncoderDecoderModel` takes;
`optim` has the prompt-only optimizer filter and the logical-axis and Adafactor factor rules of the
prompt parameters. The gin files are in `gin_configs/t5x/`; the README says how to install T5X
from source and run them. Nothing here imports T5X except `optim.factor_rules`.
"""
