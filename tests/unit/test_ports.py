"""Reserved ports: another process's port probe cannot take them, a kernel's ZMQ listener can."""

from __future__ import annotations

import errno
import socket

import pytest
import zmq
from jupyter_client.connect import port_names
from jupyter_client.manager import KernelManager

from jupyter_snapkernel.launch.ports import reserve_ports, reserved_port

LOOPBACK = "127.0.0.1"


def test_a_reserved_port_refuses_a_probe_and_takes_a_zmq_listener() -> None:
    port = reserved_port(LOOPBACK)
    with socket.socket() as probe, pytest.raises(OSError) as refused:
        probe.bind((LOOPBACK, port))  # as jupyter_client's port probe binds: without SO_REUSEADDR
    assert refused.value.errno == errno.EADDRINUSE
    context = zmq.Context()
    try:
        listener = context.socket(zmq.ROUTER)
        listener.bind(f"tcp://{LOOPBACK}:{port}")
        listener.close(linger=0)
    finally:
        context.term()


def test_reserve_ports_fills_the_unset_ports_with_five_different_ones_and_keeps_a_configured_one() -> None:
    manager = KernelManager(ip=LOOPBACK, shell_port=54321)
    reserve_ports(manager)
    ports = [getattr(manager, name) for name in port_names]
    assert manager.shell_port == 54321
    assert all(ports) and len(set(ports)) == 5
