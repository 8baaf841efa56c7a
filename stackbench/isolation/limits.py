"""What a method may spend: seconds per image and memory, enforced on its worker process (`session`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import StackbenchError


@dataclass(frozen=True)
class Limits:
    """A method's limits. `seconds_per_image`: an explain call on n images must answer within n times this (a set-up,
    the model's hand-over included, within `setup_seconds`); `memory_mb`: memory the worker may allocate beyond what
    it had when it started (torch's own libraries). None: no limit. A method past either fails its row."""

    seconds_per_image: float | None = 600.0
    memory_mb: int | None = None

    def __post_init__(self):
        for name, flag, v in (("seconds_per_image", "--seconds-per-image", self.seconds_per_image),
                              ("memory_mb", "--memory-mb", self.memory_mb)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise StackbenchError(f"{flag} ({name}) {v!r}: a positive number; leave it out for no limit")

    @property
    def setup_seconds(self) -> float | None:
        # Importing a plugin, setting it up on a view of the model: ten images' worth, from 20 s to 10 minutes.
        return None if self.seconds_per_image is None else min(600.0, max(20.0, 10 * self.seconds_per_image))

    def call_seconds(self, images: int) -> float | None:
        return None if self.seconds_per_image is None else self.seconds_per_image * max(1, images)

    def __str__(self) -> str:
        t = "no time limit" if self.seconds_per_image is None else f"{self.seconds_per_image:g} s per image"
        m = "no memory limit" if self.memory_mb is None else f"{self.memory_mb} MB"
        return f"{t}, {m}"

    def describe(self) -> dict:
        return {"seconds_per_image": self.seconds_per_image, "memory_mb": self.memory_mb}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Limits":
        d = d or {}
        unknown = set(d) - {"seconds_per_image", "memory_mb"}
        if unknown:
            raise StackbenchError(f"limits: unknown key(s) {sorted(unknown)}; give seconds_per_image and memory_mb")
        return cls(**d)
