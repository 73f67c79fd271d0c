"""The frozen T5 encoder-decoder: config, network, checkpoint I/O, decoding."""

from prompt_tuning.t5 import config as configs
from prompt_tuning.t5 import decoding
from prompt_tuning.t5.checkpoints import CheckpointError, load_checkpoint
from prompt_tuning.t5.config import T5Config
from prompt_tuning.t5.network import Decoder, Encoder, EncoderDecoder

__all__ = [
    "CheckpointError",
    "Decoder",
    "Encoder",
    "EncoderDecoder",
    "T5Config",
    "configs",
    "decoding",
    "load_checkpoint",
]
