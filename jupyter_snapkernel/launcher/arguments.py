"""What a kernelspec's argv tells the launcher, in every way frontends write it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..notebook.binding import KERNELSPEC_ARG, NOTEBOOK_ARG, argv_value

DEFAULT_KERNELSPEC = "snapkernel"
# How frontends pass the connection file: jupyter_client writes `-f X`, VS Code appends `--f=X`.
CONNECTION_FILE_FLAGS = ("-f", "--f", "--connection-file", "--IPKernelApp.connection_file")


@dataclass(frozen=True)
class LaunchArguments:
    """The launcher's own arguments, and the kernel's (the rest, as given)."""

    kernelspec: str
    connection_file: str | None
    kernel_argv: list[str]  # without the launcher's own flags


def launch_arguments(argv: Sequence[str]) -> LaunchArguments:
    """Split an argv into the launcher's flags and the kernel's arguments."""
    kernel_argv: list[str] = []
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in (NOTEBOOK_ARG, KERNELSPEC_ARG):
            skip = index + 1 < len(argv)
            continue
        if arg.startswith((NOTEBOOK_ARG + "=", KERNELSPEC_ARG + "=")):
            continue
        kernel_argv.append(arg)
    connection_file = next(
        (value for flag in CONNECTION_FILE_FLAGS if (value := argv_value(kernel_argv, flag)) is not None), None
    )
    return LaunchArguments(argv_value(argv, KERNELSPEC_ARG) or DEFAULT_KERNELSPEC, connection_file, kernel_argv)
