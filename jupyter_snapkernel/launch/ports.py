"""Ports for a kernel's connection that no other process's port probe takes before the kernel listens on them.

jupyter_client picks a kernel's ports by binding port 0 and closing the socket; until the kernel binds them,
another process doing the same (another server starting a kernel) can be handed one of them, and one of the
two kernels then fails with `Address already in use`. A port left in TIME_WAIT by a connection to itself is
refused to such probes (they bind without SO_REUSEADDR) for about a minute, while a kernel's ZMQ listener,
which sets SO_REUSEADDR, binds it.
"""

from __future__ import annotations

import socket

from jupyter_client.connect import port_names
from jupyter_client.manager import KernelManager


def reserved_port(ip: str) -> int:
    """A free TCP port of `ip`, held in TIME_WAIT: port probes skip it, a kernel's listener may take it."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ip, 0))
        listener.listen(1)
        port: int = listener.getsockname()[1]
        with socket.create_connection((ip, port)):
            accepted, _ = listener.accept()
            accepted.close()  # the side that closes first keeps the port in TIME_WAIT
    return port


def reserve_ports(manager: KernelManager) -> None:
    """Give each port of a kernel manager's connection that was not configured a reserved port."""
    for name in port_names:
        if not getattr(manager, name):
            setattr(manager, name, reserved_port(manager.ip))
