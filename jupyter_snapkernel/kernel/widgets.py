"""Bring the ipywidgets (and other comms) that the setup cells created back to life after a restore.

A build runs the setup cells before any Kernel object exists. ipywidgets still creates a comm per
widget there: ipykernel's `comm.create_comm` makes a comm, registers it with the process-wide comm
manager singleton (which the restored kernel adopts as its `comm_manager`) and drops the comm_open
because no kernel is initialised. The comm keeps `kernel = None`, and ipywidgets checks exactly
that attribute before every send: after a restore such a widget never sends an update, an echo, a
`request_state` reply, nor the `msg_id` switch that lets `with out:` capture. Giving each comm the
restored kernel makes it behave as it would have in a cold kernel.

Each restore also gives every widget a model id of its own (and rewrites the replayed setup outputs
to match): a frontend keeps the models of a kernel it was connected to, by id, after a restart, and
with the same ids in every restored kernel it would attach the new views to the old, disconnected models.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

WIDGET_TARGET = "jupyter.widget"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CONTROL_TARGET = "jupyter.widget.control"


def _widget_instances(widget_module: Any) -> dict[str, Any]:
    """ipywidgets' registry of live widgets by model id (8.x `_instances`, 7.x `Widget.widgets`)."""
    instances = getattr(widget_module, "_instances", None)
    if instances is None:
        instances = getattr(widget_module.Widget, "widgets", None) or {}
    return instances


def _attach(comm: Any, kernel: Any, manager: Any, new_id: str) -> None:
    """Point one widget comm at the live kernel under a new id, routed by the kernel's comm manager."""
    comm.kernel = kernel
    manager.comms.pop(comm.comm_id, None)
    comm.comm_id = new_id
    manager.register_comm(comm)


def reattach_widgets(kernel: Any) -> dict[str, str]:
    """Attach the setup's comms and widget models to the restored kernel; return {old model id: new model id}."""
    manager = getattr(kernel, "comm_manager", None)
    if manager is None:
        return {}
    # Comms of any library (not only widgets) were created without a kernel during the build.
    for comm in list(manager.comms.values()):
        if getattr(comm, "kernel", True) is None:
            comm.kernel = kernel
    widget_module = sys.modules.get("ipywidgets.widgets.widget")
    if widget_module is None:  # ipywidgets was never imported: nothing of it to revive
        return {}
    # The targets ipywidgets registered at import are on the same singleton manager; registering
    # them on the kernel's manager again costs nothing and covers a kernel with a manager of its own.
    widget_class = widget_module.Widget
    manager.register_target(WIDGET_TARGET, widget_class.handle_comm_opened)
    manager.register_target(CONTROL_TARGET, widget_class.handle_control_comm_opened)
    instances = _widget_instances(widget_module)
    renamed = {}
    for model_id, widget in list(instances.items()):
        comm = getattr(widget, "comm", None)
        if comm is None or getattr(comm, "comm_id", None) != model_id:
            continue
        # No comm_open here: nobody is subscribed to iopub yet, and a frontend that connects asks
        # for every model with `request_states` on the control comm, as after a page reload.
        renamed[model_id] = uuid.uuid4().hex
        _attach(comm, kernel, manager, renamed[model_id])
        instances[renamed[model_id]] = instances.pop(model_id)
    return renamed


def renamed_views(outputs: list[dict[str, Any]], renamed: dict[str, str]) -> list[dict[str, Any]]:
    """Recorded outputs with their widget views pointing at the renamed models."""
    result = []
    for output in outputs:
        view = output.get("data", {}).get(WIDGET_VIEW)
        if isinstance(view, dict) and view.get("model_id") in renamed:
            view = {**view, "model_id": renamed[view["model_id"]]}
            output = {**output, "data": {**output["data"], WIDGET_VIEW: view}}
        result.append(output)
    return result
