"""T5X scalable_t5 checkpoints (UMT5's public ones): their layer layout -> our per-layer names.

T5X's `t5x/examples/scalable_t5/network.py` gives every layer its own relative position table
(`relpos_bias`, UMT5) and keeps attention kernels 3-D (`DenseGeneral` over heads). With
`scan_layers=True`, the default of its `mt5/*.gin` files that UMT5's pretraining gin files
include, a stack's layers are one scanned module, `encoder/encoder/...` and `decoder/decoder/...`,
with the layer axis L at `param_scan_axis=1` of every parameter:

    {stack}/{stack}/{block}/{query,key,value}/kernel  [H, L, N, K]  -> layers_i/.../kernel [H, N*K]
    {stack}/{stack}/{block}/out/kernel                [N, L, K, H]  -> [N*K, H]
    {stack}/{stack}/mlp/{wi,wi_0,wi_1}/kernel         [H, L, F]     -> [H, F]   (wo: [F, L, H])
    {stack}/{stack}/{norm}/scale                      [H, L]        -> [H]
    {stack}/{stack}/relpos_bias/rel_embedding         [N, L, B]     -> layers_i/relpos_bias/...

With `scan_layers=False` the names are ours (`{stack}/layers_i/...`) and only the attention
kernels differ: `[H, N, K]` and `[N, K, H]`. `unscan` turns either layout's readers into readers
of our names and shapes (`checkpoint_tree.expected_shapes`); each reads just its layer's slice.
The stack norms, the embedding and `decoder/logits_dense` are named as ours in every layout.

Letters: H model dim, L layers, N heads, K head dim, F MLP dim, B relative position buckets.
"""

import dataclasses
import math
import re
from collections.abc import Mapping

import numpy as np

from prompt_tuning.t5 import checkpoint_tree

_SCANNED = re.compile(r"^(encoder|decoder)/\1/(.+)$")
_ATTENTION_KERNEL = re.compile(
    r"/(attention|self_attention|encoder_decoder_attention)/(\w+)/kernel$"
)


@dataclasses.dataclass
class LayerReader:
    """One layer's parameter of a scanned (or 3-D-kernel) array, in our layout.

    Attributes:
      base: the stored array's reader.
      layer: the index on the stored layer axis 1, or None (an unscanned array).
      shape: our shape (2-D kernels, the layer axis removed).
    """

    base: checkpoint_tree.ArrayReader
    layer: int | None
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    def read(self, index: checkpoint_tree.Index | None = None) -> np.ndarray:
        """Our `index` slice; the stored read covers only this layer."""
        stored = None
        if self.layer is not None:
            stored = (slice(None), slice(self.layer, self.layer + 1))
        array = np.asarray(self.base.read(stored))
        if self.layer is not None:
            array = np.squeeze(array, axis=1)
        array = array.reshape(self.shape)  # [H, N, K] -> [H, N*K]; [N, K, H] -> [N*K, H]
        return array[tuple(index)] if index else array


def is_scalable_layout(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether a checkpoint's `{name: shape}` is in a scalable_t5 layout `unscan` converts."""
    for name, shape in shapes.items():
        if _SCANNED.match(name):
            return True
        if _ATTENTION_KERNEL.search(name) and len(shape) == 3:
            return True
    return False


def _our_shape(name: str, stored: tuple[int, ...], scanned: bool) -> tuple[int, ...]:
    """The shape of one layer's parameter in our layout."""
    shape = tuple(stored[:1] + stored[2:]) if scanned else tuple(stored)
    kernel = _ATTENTION_KERNEL.search(name)
    if kernel and len(shape) == 3:
        if kernel.group(2) == "out":  # [N, K, H] -> [N*K, H]
            return (shape[0] * shape[1], shape[2])
        return (shape[0], shape[1] * shape[2])  # [H, N, K] -> [H, N*K]
    return shape


def unscan(
    readers: Mapping[str, checkpoint_tree.ArrayReader],
) -> dict[str, checkpoint_tree.ArrayReader]:
    """Readers under our names and shapes for a scalable_t5 checkpoint's readers.

    Args:
      readers: `{stored name: reader}` of a T5X checkpoint's `target`.

    Returns:
      `{our name: reader}`: scanned arrays split into one reader per layer, 3-D attention kernels
      reshaped to 2-D; other readers unchanged.

    Raises:
      CheckpointError: a scanned array without a layer axis.
    """
    out = {}
    for name, reader in readers.items():
        match = _SCANNED.match(name)
        if match is None:
            shape = _our_shape(name, tuple(reader.shape), scanned=False)
            same = shape == tuple(reader.shape)
            out[name] = reader if same else LayerReader(reader, None, shape)
            continue
        stack, rest = match.groups()
        stored = tuple(reader.shape)
        if len(stored) < 2:
            raise checkpoint_tree.CheckpointError(
                f"Scanned parameter {name} has shape {stored}, without a layer axis 1; the "
                "checkpoint is not a scan_layers=True scalable_t5 checkpoint."
            )
        shape = _our_shape(f"/{rest}", stored, scanned=True)
        assert math.prod(shape) * stored[1] == math.prod(stored), name
        for i in range(stored[1]):
            out[f"{stack}/layers_{i}/{rest}"] = LayerReader(reader, i, shape)
    return out
