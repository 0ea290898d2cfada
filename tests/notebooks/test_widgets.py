"""ipywidgets created by the setup cells work in restored kernels as in a cold kernel, seen by a real client."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from jupyter_snapkernel import env_names
from jupyter_snapkernel.notebook.builder import build_snapshot
from snapkernel_engine import SnapshotStore
from tests.helpers import KernelSession, write_notebook

Message = dict[str, Any]

SETUP = (
    "import ipywidgets\nfrom tqdm.auto import tqdm\n"
    "slider = ipywidgets.IntSlider(value=3)\nout = ipywidgets.Output()\n"
    "bar = tqdm(total=4, desc='setup')\nfor _ in range(4):\n    bar.update(1)\nbar.close()\n"
    "display(slider)\ndisplay(out)"
)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


async def run(session: KernelSession, code: str) -> tuple[Message, list[Message]]:
    """Execute `code`; return the reply and every iopub message it caused."""
    messages: list[Message] = []
    reply = await session.client.execute_interactive(code, timeout=60, output_hook=messages.append)
    assert reply["content"]["status"] == "ok", reply["content"]
    return reply, messages


def send(session: KernelSession, msg_type: str, content: dict[str, Any], metadata: dict[str, Any] | None = None) -> str:
    """Send a shell message as a frontend would; return its id."""
    message = session.client.session.msg(msg_type, content, metadata=metadata or {})
    session.client.shell_channel.send(message)
    return message["header"]["msg_id"]


async def caused_by(session: KernelSession, parent_id: str, timeout: float = 30) -> list[Message]:
    """The iopub messages a request caused, up to its idle status."""
    deadline = time.monotonic() + timeout
    caused: list[Message] = []
    while True:
        message = await session.client.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.1))
        if message["parent_header"].get("msg_id") != parent_id:
            continue
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return caused
        caused.append(message)


def comm_messages(messages: list[Message], comm_id: str) -> list[dict[str, Any]]:
    """The data of the comm_msg messages sent on one comm."""
    return [
        m["content"]["data"] for m in messages if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
    ]


async def request_states(session: KernelSession) -> dict[str, Any]:
    """Open a `jupyter.widget.control` comm and ask for every model's state, as JupyterLab does."""
    control_id = f"control-{time.monotonic_ns()}"
    opened = send(
        session,
        "comm_open",
        {"comm_id": control_id, "target_name": "jupyter.widget.control", "data": {}},
        metadata={"version": "1.0.0"},
    )
    await caused_by(session, opened)
    asked = send(session, "comm_msg", {"comm_id": control_id, "data": {"method": "request_states"}})
    (answer,) = comm_messages(await caused_by(session, asked), control_id)
    assert answer["method"] == "update_states"
    return answer["states"]


def normalised(state: dict[str, Any], states: dict[str, Any]) -> dict[str, Any]:
    """A model's state with references to other models named by model name, not by (random) id."""

    def name(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("IPY_MODEL_"):
            return "IPY_MODEL_" + states[value[len("IPY_MODEL_") :]]["model_name"]
        if isinstance(value, list):
            return [name(item) for item in value]
        return value

    return {key: name(value) for key, value in state.items()}


async def observe(session: KernelSession, setup_messages: list[Message]) -> dict[str, Any]:
    """Drive the setup's widgets like a frontend and the user would; return what a frontend sees."""
    slider_id, out_id = await session.value("[slider.model_id, out.model_id]")
    displayed = [
        m["content"]["data"][WIDGET_VIEW]["model_id"]
        for m in setup_messages
        if m["msg_type"] == "display_data" and WIDGET_VIEW in m["content"]["data"]
    ]
    states = await request_states(session)
    comm_info = await session.client.comm_info(target_name="jupyter.widget", reply=True)
    # The fallback of older frontends: a request_state on the model's own comm.
    asked = send(session, "comm_msg", {"comm_id": slider_id, "data": {"method": "request_state"}})
    slider_request_state = comm_messages(await caused_by(session, asked), slider_id)
    _, set_in_kernel = await run(session, "slider.value = 7")
    updated = send(
        session,
        "comm_msg",
        {"comm_id": slider_id, "data": {"method": "update", "state": {"value": 9}, "buffer_paths": []}},
    )
    echoed = comm_messages(await caused_by(session, updated), slider_id)
    reply, captured = await run(session, "with out:\n    print('x')")
    execute_id = reply["parent_header"]["msg_id"]
    return {
        "slider_id": slider_id,
        "displayed": displayed,
        "states": states,
        "comms": set(comm_info["content"]["comms"]),
        "slider_request_state": slider_request_state,
        "set_in_kernel": comm_messages(set_in_kernel, slider_id),
        "echoed": echoed,
        "value_after_frontend_update": await session.value("slider.value"),
        "output_widget": [
            ("capture", m["content"]["data"]["state"]["msg_id"] == execute_id)
            if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == out_id
            else (m["msg_type"], m["content"].get("text"))
            for m in captured
            if m["msg_type"] in {"comm_msg", "stream"}
        ],
    }


async def test_setup_widgets_work_after_a_restore_as_in_a_cold_kernel(
    open_session: Any,
    open_kernel: Any,
    jp_root_dir: Path,
    kernel_store: SnapshotStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notebook = write_notebook(jp_root_dir / "widgets.ipynb", [SETUP], marked=0, after=["slider.value"])
    monkeypatch.setenv(env_names.COLD, "1")
    cold_session: KernelSession = await open_kernel(notebook)
    monkeypatch.delenv(env_names.COLD)
    assert not cold_session.restored
    _, cold_setup = await run(cold_session, SETUP)
    opened = {m["content"]["comm_id"] for m in cold_setup if m["msg_type"] == "comm_open"}
    cold = await observe(cold_session, cold_setup)

    build_snapshot(notebook, kernel_store)
    restored_runs = []
    for session in (await open_session(notebook), await open_kernel(notebook)):  # restored twice
        assert session.restored
        _, replayed = await run(session, SETUP)  # Run All: the setup cell's outputs are replayed
        assert any(
            m["content"]["metadata"].get("snapkernel", {}).get("replayed")
            for m in replayed
            if m["msg_type"] == "display_data"
        )
        restored_runs.append(await observe(session, replayed))
    restored = restored_runs[0]
    # Each restored kernel has model ids of its own: a frontend keeps a restarted kernel's old models by id.
    assert restored_runs[0]["slider_id"] != restored_runs[1]["slider_id"]

    for seen in (cold, *restored_runs):
        states = seen["states"]
        # Every model is known, under the id the (replayed) setup outputs display.
        assert seen["slider_id"] in states
        assert seen["displayed"] and set(seen["displayed"]) <= set(states)
        assert seen["comms"] == set(states)
        assert states[seen["slider_id"]]["state"]["value"] == 3
        assert seen["slider_request_state"] == [
            {"method": "update", "state": states[seen["slider_id"]]["state"], "buffer_paths": []}
        ]
        assert seen["set_in_kernel"] == [{"method": "update", "state": {"value": 7}, "buffer_paths": []}]
        assert seen["echoed"] == [{"method": "echo_update", "state": {"value": 9}, "buffer_paths": []}]
        assert seen["value_after_frontend_update"] == 9
        # The frontend puts what a request prints into the Output widget while its msg_id is the request's.
        assert seen["output_widget"] == [("capture", True), ("stream", "x\n"), ("capture", False)]
    assert set(cold["states"]) == opened, "the cold kernel announced each model with a comm_open"
    model_names = Counter(state["model_name"] for state in restored["states"].values())
    assert model_names == Counter(state["model_name"] for state in cold["states"].values())
    assert model_names["IntSliderModel"] == 1 and model_names["OutputModel"] == 1
    for model in ("IntSliderModel", "OutputModel"):
        (restored_state,) = [s for s in restored["states"].values() if s["model_name"] == model]
        (cold_state,) = [s for s in cold["states"].values() if s["model_name"] == model]
        assert normalised(restored_state["state"], restored["states"]) == normalised(
            cold_state["state"], cold["states"]
        )


async def test_a_setup_without_widgets_never_imports_ipywidgets(
    open_session: Any, jp_root_dir: Path, kernel_store: SnapshotStore
) -> None:
    notebook = write_notebook(jp_root_dir / "plain.ipynb", ["setup_value = 42"], marked=0)
    build_snapshot(notebook, kernel_store)
    session: KernelSession = await open_session(notebook)
    assert session.restored
    facts = "[setup_value, 'ipywidgets' in __import__('sys').modules]"
    assert await session.value(facts) == [42, False]
