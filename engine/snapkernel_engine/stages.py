"""Where the time of a snapshot goes: its consecutive stages, timed, and the one line that shows them."""

from __future__ import annotations

import time
from collections.abc import Mapping

# Every stage a build can go through, in order, with the words that show it.
STAGES: dict[str, str] = {
    "setup": "setup cells",
    "quiesce": "quiesce",
    "prepare": "checks",
    "gpu_to_host": "GPU to host",
    "criu_dump": "CRIU dump",
    "gpu_back": "GPU back",
    "incremental": "changed pages",
    "hash": "hash",
    "fsync": "fsync",
    "publish": "publish",
    "replace": "old removed",
}
# Stages that took less are left out of what shows them.
SHOWN_FROM_S = 0.005
# The stages of the checkpoint itself: from the kernel being ready to the snapshot being published.
CHECKPOINT_STAGES = tuple(name for name in STAGES if name not in {"setup", "quiesce", "replace"})


class StageClock:
    """Wall time split into consecutive stages: each `lap` ends the stage that ran since the one before."""

    def __init__(self, seconds: Mapping[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = dict(seconds or {})
        self._mark = time.perf_counter()

    def lap(self, stage: str) -> float:
        """End `stage` now (adding to its time when it ran before) and return how long this lap took."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        now = time.perf_counter()
        took = now - self._mark
        self.seconds[stage] = self.seconds.get(stage, 0.0) + took
        self._mark = now
        return took

    def checkpoint_s(self) -> float:
        """Seconds from the kernel being ready to its snapshot being published."""
        return sum(self.seconds.get(name, 0.0) for name in CHECKPOINT_STAGES)


def describe_stages(seconds: Mapping[str, float]) -> str:
    """One line naming each stage that took time, in order: ``setup cells 2.31 s · CRIU dump 0.52 s · …``."""
    shown = [
        f"{words} {seconds[name]:.2f} s" for name, words in STAGES.items() if seconds.get(name, 0.0) >= SHOWN_FROM_S
    ]
    return " · ".join(shown) or "no stage took time"
