"""The served prompts: names, their rows in the serving bank, and the bank's device arrays.

The bank (`prompts.RaggedPromptBank`) is a table `[C, P, H]` plus lengths `[C]`; a prompt `[p, H]`
occupies one row, right-aligned. Adding, replacing or removing a prompt writes the host copy and
puts a new table on the devices: same shape, so no compiled program changes. A prompt longer than
P, or one more prompt than C rows, resizes the bank (C doubles, P grows to the prompt's length):
the only change that needs new programs, reported by `add` so the server recompiles once.

Every change publishes a new immutable `BankSnapshot`; a batch uses the snapshot taken when it
was formed, so a prompt replaced mid-flight serves either its old or its new value, never a mix.

Letters: C capacity, P bank prompt length, p a prompt's length, H model dim.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from prompt_tuning.prompts.ragged_bank import right_align


class PromptError(ValueError):
    """A prompt cannot be served (wrong shape or dtype, corrupt file, bank full)."""


@dataclasses.dataclass(frozen=True)
class PromptInfo:
    """One served prompt.

    Attributes:
      name: the prompt's (task's) name.
      length: p, its number of positions.
      slot: its row in the bank.
      source: where it came from (a file, a run folder, an upload).
      added: UNIX time it was added or last replaced.
    """

    name: str
    length: int
    slot: int
    source: str
    added: float


@dataclasses.dataclass(frozen=True)
class BankSnapshot:
    """The bank as one batch sees it.

    Attributes:
      table: device array `[C, P, H]`.
      lengths: device array `[C]` int32.
      slots: prompt name -> row.
      version: increases with every change.
    """

    table: Any
    lengths: Any
    slots: Mapping[str, int]
    version: int

    @property
    def shape(self) -> tuple[int, int]:
        """(C, P)."""
        return int(self.table.shape[0]), int(self.table.shape[1])


@dataclasses.dataclass(frozen=True)
class AddResult:
    """What `PromptRegistry.add` did.

    Attributes:
      info: the stored prompt.
      replaced: a prompt of that name existed and was replaced.
      resized: the bank changed shape (C, P): programs must be compiled for the new shape.
      shape: the bank's (C, P) after the change.
    """

    info: PromptInfo
    replaced: bool
    resized: bool
    shape: tuple[int, int]


def parse_npy(data: bytes, what: str) -> np.ndarray:
    """Reads a `.npy` file's bytes (no pickles).

    Raises:
      PromptError: not a readable `.npy` array (the reader's message is included).
    """
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # noqa: BLE001 (numpy raises several kinds for corrupt files)
        raise PromptError(
            f"{what} is not a readable .npy array ({type(error).__name__}: {error}); save the "
            "prompt with numpy.save as a float array [P, H]."
        ) from None


class PromptRegistry:
    """Thread-safe map of prompt names to bank rows, publishing `BankSnapshot`s.

    Attributes:
      embed_dim: H of the model.
      max_length: the longest prompt accepted (a longer bank length is refused).
      max_capacity: the most rows the bank may grow to.
    """

    def __init__(
        self,
        embed_dim: int,
        capacity: int,
        length: int,
        place: Callable[[np.ndarray], Any],
        max_length: int = 1024,
        max_capacity: int = 4096,
    ):
        """Creates an empty bank.

        Args:
          embed_dim: H.
          capacity: C, the initial number of rows.
          length: P, the initial longest prompt.
          place: puts a host array on the devices (replicated), e.g. `jax.device_put` with the
            engine's bank sharding.
          max_length: the longest prompt accepted.
          max_capacity: the most rows the bank grows to.

        Raises:
          ValueError: sizes are not positive, or `length` > `max_length`.
        """
        if min(embed_dim, capacity, length) < 1 or length > max_length:
            raise ValueError(
                f"Bank sizes must be positive with length <= {max_length}: got capacity "
                f"{capacity}, length {length}, model dim {embed_dim}."
            )
        self.embed_dim = embed_dim
        self.max_length = max_length
        self.max_capacity = max(max_capacity, capacity)
        self._place = place
        self._lock = threading.Lock()
        self._table = np.zeros((capacity, length, embed_dim), np.float32)  # [C, P, H]
        self._lengths = np.zeros((capacity,), np.int32)  # [C]
        self._infos: dict[str, PromptInfo] = {}
        self._version = 0
        self._snapshot = self._publish()

    # Reading ------------------------------------------------------------------------------------
    def snapshot(self) -> BankSnapshot:
        """The current bank (immutable)."""
        return self._snapshot

    def infos(self) -> list[PromptInfo]:
        """The served prompts, by name."""
        with self._lock:
            return [self._infos[n] for n in sorted(self._infos)]

    def get(self, name: str) -> PromptInfo | None:
        """One prompt's info, or None."""
        return self._infos.get(name)

    def names(self) -> list[str]:
        """The served prompt names, sorted."""
        return sorted(self._infos)

    @property
    def shape(self) -> tuple[int, int]:
        """The bank's (C, P)."""
        return self._snapshot.shape

    # Checking ------------------------------------------------------------------------------------
    def expected_shape(self) -> str:
        """The accepted prompt shape, in words."""
        return f"[p, {self.embed_dim}] with 1 <= p <= {self.max_length} (float)"

    def check(self, prompt: Any, what: str) -> np.ndarray:
        """Validates a prompt `[p, H]` and returns it as float32.

        Raises:
          PromptError: not a 2-D float array of width H and length 1..max_length, or not finite;
            the message names both shapes.
        """
        array = np.asarray(prompt)
        if array.dtype.kind != "f":  # float16/32/64; integers, bools, objects are not prompts
            raise PromptError(
                f"{what} has dtype {array.dtype} and shape {list(array.shape)}; the model takes a "
                f"float prompt {self.expected_shape()}."
            )
        p = array.shape[0] if array.ndim == 2 else 0
        if array.ndim != 2 or array.shape[1] != self.embed_dim or not 1 <= p <= self.max_length:
            raise PromptError(
                f"{what} has shape {list(array.shape)}, but this model takes a prompt "
                f"{self.expected_shape()}."
            )
        if not np.all(np.isfinite(array)):
            raise PromptError(f"{what} holds NaN or infinite values.")
        return array.astype(np.float32)

    # Changing ------------------------------------------------------------------------------------
    def add(self, name: str, prompt: Any, source: str) -> AddResult:
        """Adds or replaces a prompt `[p, H]` (checked).

        Returns:
          What changed; `resized` when the bank had to grow (new programs needed).

        Raises:
          PromptError: the prompt does not fit (see `check`) or the bank is at `max_capacity`.
        """
        array = self.check(prompt, f"Prompt {name!r}")
        with self._lock:
            old = self._infos.get(name)
            capacity, length = self._table.shape[:2]
            slot = old.slot if old is not None else self._free_slot()
            new_capacity = capacity
            if slot is None:
                if capacity >= self.max_capacity:
                    raise PromptError(
                        f"The prompt bank is full ({capacity} prompts, the maximum); remove a "
                        "prompt first or start the server with a larger BANK_MAX_CAPACITY."
                    )
                new_capacity, slot = min(2 * capacity, self.max_capacity), capacity
            new_length = max(length, array.shape[0])
            resized = (new_capacity, new_length) != (capacity, length)
            if resized:
                self._resize(new_capacity, new_length)
            self._table[slot] = right_align(array, new_length)
            self._lengths[slot] = array.shape[0]
            info = PromptInfo(name, int(array.shape[0]), int(slot), source, time.time())
            self._infos[name] = info
            self._snapshot = self._publish()
            return AddResult(info, old is not None, resized, self._snapshot.shape)

    def remove(self, name: str) -> PromptInfo:
        """Removes a prompt; its row becomes free.

        Raises:
          KeyError: no such prompt.
        """
        with self._lock:
            info = self._infos.pop(name)
            self._table[info.slot] = 0.0
            self._lengths[info.slot] = 0
            self._snapshot = self._publish()
            return info

    def _free_slot(self) -> int | None:
        used = {info.slot for info in self._infos.values()}
        return next((i for i in range(self._table.shape[0]) if i not in used), None)

    def _resize(self, capacity: int, length: int) -> None:
        """Grows the host table to (capacity, length), keeping rows right-aligned."""
        old_capacity, old_length = self._table.shape[:2]
        table = np.zeros((capacity, length, self.embed_dim), np.float32)
        table[:old_capacity, length - old_length :] = self._table  # [C, P, H]
        lengths = np.zeros((capacity,), np.int32)
        lengths[:old_capacity] = self._lengths
        self._table, self._lengths = table, lengths

    def _publish(self) -> BankSnapshot:
        self._version += 1
        slots = {name: info.slot for name, info in self._infos.items()}
        return BankSnapshot(
            self._place(self._table.copy()), self._place(self._lengths.copy()), slots, self._version
        )
