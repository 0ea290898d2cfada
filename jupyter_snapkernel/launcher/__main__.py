"""`python -m jupyter_snapkernel.launcher`: every snapkernel kernelspec's argv."""

from __future__ import annotations

import os
import sys

from .. import env_names
from ..notebook.binding import KERNEL_MODULE
from .arguments import launch_arguments


def main() -> None:
    """Run the kernel as a provisioner decided it, or decide, restore and supervise it here."""
    arguments = launch_arguments(sys.argv[1:])
    if os.environ.pop(env_names.PROVISIONED, ""):
        # A provisioner planned this launch (and restores never run the argv): the cold kernel replaces this
        # process, so that the provisioner's process is the kernel itself, as with a plain kernelspec.
        os.execv(sys.executable, [sys.executable, "-m", KERNEL_MODULE, *arguments.kernel_argv])
    from .direct import launch

    raise SystemExit(launch(arguments))


if __name__ == "__main__":
    main()
