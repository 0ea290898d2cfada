"""The launcher stands for its restored kernel: signals go to the kernel, and the kernel's end is the launcher's."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from snapkernel_engine import RestoredTree

TERMINATE_GRACE_S = 5.0  # how long a terminated kernel may take to exit before it is killed


def supervise(tree: RestoredTree) -> int:
    """Forward interrupts to the kernel, end it when this process is told to end, and return its exit status.

    A SIGKILL of this process ends the kernel too: the engine's restore ties the tree to its caller.
    """

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        tree.send_signal(signal.SIGINT)

    def terminate(_signum: int, _frame: FrameType | None) -> None:
        tree.terminate()
        killer = threading.Timer(TERMINATE_GRACE_S, tree.kill)
        killer.daemon = True
        killer.start()

    signal.signal(signal.SIGINT, interrupt)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminate)
    status = tree.wait()
    return status if status >= 0 else 128 - status
