"""The frozen T5 encoder-decoder: config, network, checkpoint I/O, decoding."""

from prompt_tuning.t5 import config as configs
from prompt_tuning.t5.config import T5Config
