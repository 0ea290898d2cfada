"""JupyterLab in real headless Chromium: the snapshot toolbar item, the marked setup cells, build and restore."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import FloatRect, Locator, Page, Route, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output" / "ui"
DOC_IMAGES = REPO / "docs" / "images"
UPDATE_SCREENSHOTS = os.environ.get("SNAPKERNEL_UPDATE_SCREENSHOTS") == "1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 760}
TOOLBAR_ITEM = ".jp-SnapKernel-status"
BUTTON = ".jp-SnapKernel-button"  # a jp-button (ToolbarButtonComponent) holding the label and the tooltip
SETUP_CELL = "jp-SnapKernel-setupCell"
SETUP_END = "jp-SnapKernel-setupEnd"
RESTORE_POINT = "jp-SnapKernel-restorePoint"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CURRENT = "window.jupyterapp.shell.currentWidget"
# For waits: they poll before JupyterLab has set window.jupyterapp on a slow page load, so undefined, not a throw.
SHOWN = "window.jupyterapp?.shell.currentWidget"


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    store: Path


@dataclass
class Screenshots:
    """Screenshots of one test, in a folder emptied when the test starts; copied to docs/images on request."""

    folder: Path
    taken: list[Path] = field(default_factory=list)

    def take(self, target: Locator, name: str, *, doc: bool = False) -> Path:
        """Screenshot an element and check the PNG written now; with SNAPKERNEL_UPDATE_SCREENSHOTS=1 keep it in docs."""
        box = target.bounding_box()
        assert box is not None, f"{name}: the element is not visible"
        return self.clip(target.page, name, box, doc=doc)

    def take_notebook(self, page: Page, name: str, *, doc: bool = False) -> Path:
        """Screenshot the current notebook panel down to its last cell (not the empty space below)."""
        box = panel(page).bounding_box()
        last = panel(page).locator(".jp-Notebook .jp-Cell").last.bounding_box()
        assert box is not None and last is not None, f"{name}: the notebook is not visible"
        bottom = min(box["y"] + box["height"], last["y"] + last["height"] + 24)
        return self.clip(
            page, name, FloatRect(x=box["x"], y=box["y"], width=box["width"], height=bottom - box["y"]), doc=doc
        )

    def clip(self, page: Page, name: str, box: FloatRect, *, doc: bool) -> Path:
        """Screenshot a region of the page, check that the PNG written now has its size, and keep it."""
        path = self.folder / f"{name}.png"
        assert not path.exists(), f"{name}.png was taken twice in this test"
        region = FloatRect(x=round(box["x"]), y=round(box["y"]), width=round(box["width"]), height=round(box["height"]))
        page.screenshot(path=str(path), clip=region)
        assert png_size(path) == (region["width"], region["height"]), f"{name}.png is not {region}"
        self.taken.append(path)
        if doc and UPDATE_SCREENSHOTS:
            DOC_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOC_IMAGES / path.name)
        return path

    def take_page(self, page: Page, name: str) -> Path:
        """Screenshot the whole viewport and check the PNG written now."""
        return self.clip(page, name, FloatRect(x=0, y=0, width=VIEWPORT["width"], height=VIEWPORT["height"]), doc=False)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file (its IHDR chunk); fails on an empty or non-PNG file."""
    data = path.read_bytes()
    assert len(data) > 100, f"{path.name} is empty or truncated ({len(data)} bytes)"
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0
    return width, height


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Screenshots:
    """A fresh test-output/ui/TEST/ folder for this test's screenshots."""
    folder = OUTPUT / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return Screenshots(folder)


@contextmanager
def start_lab(
    tmp_path: Path,
    *extra: str,
    settings: dict[str, dict[str, object]] | None = None,
    environment: dict[str, str] | None = None,
) -> Iterator[Lab]:
    """A real JupyterLab server on localhost serving tmp_path/notebooks, with its own snapshot store.

    `settings` are user settings by plugin id. Settings and workspaces are this test's only: no news
    prompt, no notebooks reopened from another test.
    """
    root = tmp_path / "notebooks"
    root.mkdir(exist_ok=True)
    plugins = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}, **(settings or {})}
    for plugin, values in plugins.items():
        package, name = plugin.split(":")
        path = tmp_path / "lab-settings" / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), "ui-test-token"
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
        "SNAPKERNEL_STORE": str(tmp_path / "store"),
        "SNAPKERNEL_AUTO_BUILD": "0",
        "SNAPKERNEL_SPARE_KERNELS": "0",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        **(environment or {}),
    }
    command = [
        str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True", *extra,
    ]  # fmt: skip
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield Lab(url, token, root, tmp_path / "store")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab with the snapkernel server extension, and an untagged copy of the NumPy example."""
    (tmp_path / "notebooks").mkdir()
    book = nbformat.read(REPO / "examples" / "numpy_setup.ipynb", as_version=4)
    for cell in book.cells:
        cell.metadata.pop("tags", None)
    nbformat.write(book, tmp_path / "notebooks" / "numpy_setup.ipynb")
    with start_lab(tmp_path) as lab:
        yield lab


@pytest.fixture
def lab_without_extension(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab whose server runs without the snapkernel server extension (the lab extension is still there)."""
    with start_lab(tmp_path, '--ServerApp.jpserver_extensions={"jupyter_snapkernel": False}') as lab:
        yield lab


@pytest.fixture
def browser_page() -> Iterator[Page]:
    """A page of real headless Chromium (Debian's), closed after the test."""
    assert Path(CHROMIUM).exists(), "Chromium is missing: `make setup` installs Debian's chromium package"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


def open_notebook(page: Page, lab: Lab, name: str) -> None:
    """Open a notebook in JupyterLab and wait until its toolbar item is there."""
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}")
    page.wait_for_selector(TOOLBAR_ITEM, timeout=120_000)


def panel(page: Page) -> Locator:
    """The current notebook panel (JupyterLab may reopen other notebooks from its workspace)."""
    return page.locator(f"#{page.evaluate(f'{CURRENT}.id')}")


def item(page: Page) -> Locator:
    """The current notebook's snapshot toolbar item."""
    return panel(page).locator(TOOLBAR_ITEM)


def wait_for_state(page: Page, state: str, timeout_s: float) -> Locator:
    """Wait until the current notebook's toolbar item shows `state` (its button, label and tooltip rendered)."""
    target = item(page)
    try:
        target.locator(f"{BUTTON}[data-snapkernel-state='{state}']").wait_for(timeout=timeout_s * 1000)
    except PlaywrightTimeoutError:
        shown = target.locator(BUTTON).get_attribute("data-snapkernel-state", timeout=1000)
        raise AssertionError(
            f"the toolbar shows {shown!r}, not {state!r}, after {timeout_s} s: {tooltip(page)}"
        ) from None
    return target


def tooltip(page: Page) -> str:
    """The toolbar item's tooltip (its button's title)."""
    return item(page).locator(BUTTON).get_attribute("title") or ""


def cell_classes(page: Page) -> list[tuple[bool, bool]]:
    """For each cell of the current notebook: (marked as a setup cell, marked as the setup's last cell)."""
    return [
        (SETUP_CELL in classes, SETUP_END in classes)
        for classes in page.evaluate(f"{CURRENT}.content.widgets.map(cell => cell.node.className)")
    ]


def wait_for_marks(page: Page, setup: list[int], end: int | None, timeout_s: float = 30) -> None:
    """Wait until exactly the cells `setup` carry the setup class and only `end` the last-cell badge."""
    cells = page.evaluate(f"{CURRENT}.content.widgets.length")
    expected = [(index in setup, index == end) for index in range(cells)]
    deadline = time.monotonic() + timeout_s
    while cell_classes(page) != expected:
        assert time.monotonic() < deadline, f"setup marks {cell_classes(page)}, expected {expected}"
        time.sleep(0.1)


def wait_in_page(page: Page, condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `condition` while the page's events flow (playwright delivers them only during its own calls)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        page.wait_for_timeout(100)


def wait_for_idle_kernel(page: Page) -> None:
    page.wait_for_function(
        f"() => {{ const w = {SHOWN};"
        " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle'; }",
        timeout=120_000,
    )


def mark_cell(page: Page, index: int) -> None:
    """Toggle the setup-boundary tag on a cell with the extension's command."""
    page.evaluate(f"{CURRENT}.content.activeCellIndex = {index}")
    page.evaluate("window.jupyterapp.commands.execute('snapkernel:mark-setup-cell')")


def type_into_cell(page: Page, index: int, text: str) -> None:
    """Type at the end of a cell's editor, as a person does (nothing is saved)."""
    editor = panel(page).locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type(text)


def tiny_notebook(root: Path, name: str, setup: list[str], marked: int | None, after: list[str]) -> Path:
    """A snapkernel notebook: a markdown title, then the setup code cells (`marked` tagged) and the rest."""
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "snapkernel", "display_name": "Python 3 (snapshots)", "language": "python"}
    book.cells.append(nbformat.v4.new_markdown_cell("# Setup"))
    for index, source in enumerate([*setup, *after]):
        cell = nbformat.v4.new_code_cell(source)
        if index == marked:
            cell.metadata["tags"] = ["snapshot"]
        book.cells.append(cell)
    path = root / name
    nbformat.write(book, path)
    return path


def test_mark_build_restore_run_and_edit_in_jupyterlab(lab: Lab, browser_page: Page, shots: Screenshots) -> None:
    page = browser_page
    open_notebook(page, lab, "numpy_setup.ipynb")
    wait_for_state(page, "none", timeout_s=120)
    wait_for_idle_kernel(page)
    assert "mark the last setup cell" in tooltip(page)
    wait_for_marks(page, setup=[], end=None)
    shots.take_notebook(page, "state-none", doc=True)

    # Mark the second code cell (the notebook's third cell) with the command: both code cells are setup cells.
    mark_cell(page, 2)
    assert page.evaluate(f"{CURRENT}.content.activeCell.model.getMetadata('tags')") == ["snapshot"]
    wait_for_marks(page, setup=[1, 2], end=2)
    assert page.evaluate(f"{CURRENT}.content.widgets[2].node.dataset.snapkernelLabel") == "snapshot ends here"

    item(page).locator(BUTTON).click()
    wait_for_state(page, "building", timeout_s=30)
    shots.take_notebook(page, "state-building", doc=True)
    wait_for_state(page, "ready", timeout_s=300)
    saved = json.loads((lab.root / "numpy_setup.ipynb").read_text())
    assert saved["cells"][2]["metadata"]["tags"] == ["snapshot"], "the build saved the marked notebook"
    assert "restart the kernel" in tooltip(page)
    shots.take_notebook(page, "state-ready", doc=True)

    item(page).locator(BUTTON).click()  # restart the kernel from the snapshot, once confirmed
    page.locator(".jp-Dialog button.jp-mod-accept", has_text="Restart").click()
    page.wait_for_selector("text=Kernel restored from snapshot", timeout=120_000)
    wait_for_idle_kernel(page)
    shots.take_page(page, "restored-notification")

    # Run the last cell: it prints a value computed by the setup cells, which did not run here.
    last = panel(page).locator(".jp-Notebook .jp-Cell").last
    last.click()
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell')")
    output = last.locator(".jp-OutputArea-output")
    output.wait_for(timeout=60_000)
    assert output.inner_text().startswith("trace:")

    # Type into a setup cell without saving: the snapshot is stale at once, the file unchanged.
    type_into_cell(page, 1, "\nextra = 1")
    wait_for_state(page, "stale", timeout_s=15)
    assert "setup cells changed" in tooltip(page)
    assert page.evaluate(f"{CURRENT}.context.model.dirty")
    assert "extra = 1" not in (lab.root / "numpy_setup.ipynb").read_text()
    shots.take_notebook(page, "state-stale", doc=True)

    # A setup cell that raises makes the rebuild (which saves first) fail, with the error in the tooltip.
    page.evaluate(f"{CURRENT}.content.widgets[1].model.sharedModel.setSource('raise RuntimeError(\"no data today\")')")
    item(page).locator(BUTTON).click()
    wait_for_state(page, "failed", timeout_s=120)
    assert "no data today" in tooltip(page)
    shots.take(item(page), "toolbar-failed")
    shots.take_notebook(page, "state-failed", doc=True)
    assert sorted(path.name for path in shots.folder.glob("*.png")) == sorted(path.name for path in shots.taken)


def test_setup_cells_follow_tags_and_moves_and_an_unsaved_edit_turns_stale(
    lab: Lab, browser_page: Page, shots: Screenshots
) -> None:
    from jupyter_snapkernel.notebook.builder import build_snapshot
    from jupyter_snapkernel.paths import open_store

    # cells: 0 markdown, 1-2 setup (2 tagged), 3-4 after.
    notebook = tiny_notebook(lab.root, "tiny.ipynb", ["x = 1", "y = x + 1"], 1, ["z = y * 2", "print(z)"])
    build_snapshot(notebook, open_store(lab.store))
    page = browser_page
    open_notebook(page, lab, "tiny.ipynb")
    wait_for_state(page, "ready", timeout_s=120)
    wait_for_marks(page, setup=[1, 2], end=2)

    mark_cell(page, 3)  # the tag moves down: one more setup cell; the snapshot is now a restore point inside it
    wait_for_marks(page, setup=[1, 2, 3], end=3)
    wait_for_state(page, "partial", timeout_s=15)
    assert "restores up to setup cell 2 of 3; cell 3 run again" in tooltip(page)
    page.evaluate("window.jupyterapp.commands.execute('notebook:move-cell-up')")  # the tagged cell goes up
    wait_for_marks(page, setup=[1, 2], end=2)
    page.evaluate("window.jupyterapp.commands.execute('notebook:move-cell-down')")
    wait_for_marks(page, setup=[1, 2, 3], end=3)
    mark_cell(page, 3)  # untagged: no setup section at all
    wait_for_marks(page, setup=[], end=None)
    wait_for_state(page, "none", timeout_s=15)
    mark_cell(page, 2)  # the snapshot's own cells again
    wait_for_marks(page, setup=[1, 2], end=2)
    wait_for_state(page, "ready", timeout_s=15)
    shots.take_notebook(page, "setup-cells-marked")

    # An unsaved edit of a setup cell is stale before any save; undoing it is ready again.
    type_into_cell(page, 1, "  # changed")
    wait_for_state(page, "stale", timeout_s=15)
    assert "changed" not in "".join(json.loads(notebook.read_text())["cells"][1]["source"])
    for _ in range(len("  # changed")):
        page.keyboard.press("Backspace")
    wait_for_state(page, "ready", timeout_s=15)


def point_marks(page: Page) -> dict[int, tuple[str, str]]:
    """The restore point markers of the current notebook: (state, label) by cell index, the classes checked."""
    cells = page.evaluate(
        f"{CURRENT}.content.widgets.map(cell => [cell.node.className, cell.node.dataset.snapkernelPoint ?? null,"
        " cell.node.dataset.snapkernelPointLabel ?? null])"
    )
    marks: dict[int, tuple[str, str]] = {}
    for index, (class_name, state, label) in enumerate(cells):
        classes = set(class_name.split())
        shown = {name.removeprefix(f"{RESTORE_POINT}-") for name in classes if name.startswith(f"{RESTORE_POINT}-")}
        assert (RESTORE_POINT in classes) == (state is not None) and shown == ({state} - {None}), (index, classes)
        if state is not None:
            marks[index] = (state, label)
    return marks


def wait_for_points(page: Page, expected: dict[int, str], timeout_s: float = 30) -> dict[int, str]:
    """Wait until exactly the cells of `expected` carry a restore point marker, each in its state; their labels."""

    def states() -> dict[int, str]:
        """The state of each marker shown now."""
        return {index: state for index, (state, _) in point_marks(page).items()}

    try:
        wait_in_page(page, lambda: states() == expected, timeout_s, "")
    except AssertionError:
        raise AssertionError(f"restore point markers {states()}, expected {expected}: {tooltip(page)}") from None
    return {index: label for index, (_, label) in point_marks(page).items()}


# Two setup cells of over a second (each leaves a restore point behind it) and the fast tagged last one.
SLOW_SETUP = ["import time\ntime.sleep(1.2)\na = 1", "time.sleep(1.2)\nb = a + 1", "c = b + 1"]


def test_restore_points_are_marked_and_an_edit_of_the_last_setup_cell_restores_the_rest(
    lab: Lab, browser_page: Page, shots: Screenshots
) -> None:
    # cells: 0 markdown, 1-3 setup (3 tagged), 4 after.
    notebook = tiny_notebook(lab.root, "points.ipynb", SLOW_SETUP, 2, ["print(c)"])
    page = browser_page
    open_notebook(page, lab, "points.ipynb")
    wait_for_state(page, "none", timeout_s=120)
    wait_for_marks(page, setup=[1, 2, 3], end=3)
    assert wait_for_points(page, {}) == {}

    item(page).locator(BUTTON).click()
    wait_for_state(page, "ready", timeout_s=300)
    labels = wait_for_points(page, {1: "current", 2: "current", 3: "current"})
    assert labels == {
        1: "restore point: setup cell 1",
        2: "restore point: setup cells 1-2",
        3: "restore point: setup cells 1-3",
    }
    shots.take_notebook(page, "restore-points-ready", doc=True)

    # An unsaved edit of the last setup cell: a start would restore the point after cell 2 and run cell 3 again.
    type_into_cell(page, 3, "\nd = 4")
    shown = wait_for_state(page, "partial", timeout_s=15)
    assert shown.locator(BUTTON).inner_text().strip() == "Restores 2/3"
    assert "A kernel start restores up to setup cell 2 of 3; cell 3 run again" in tooltip(page)
    labels = wait_for_points(page, {1: "current", 2: "current", 3: "stale"})
    assert labels[3] == "stale restore point: setup cells 1-3"
    assert "d = 4" not in notebook.read_text()
    shots.take_notebook(page, "restore-points-partial", doc=True)

    # Saved, the edit is what a kernel start reads: a restart restores the point and says which cell runs again.
    page.evaluate(f"async () => {{ await {CURRENT}.context.save(); }}")
    wait_for_idle_kernel(page)
    before = start_time(page)
    page.evaluate(f"{CURRENT}.sessionContext.session.kernel.restart()")
    page.wait_for_function(f"async () => (await ({START_TIME_JS})) > {before}", timeout=120_000)
    toast = page.locator(".Toastify__toast", has_text="Kernel restored from restore point")
    toast.wait_for(timeout=60_000)
    assert "after setup cell 2 of 3 in " in toast.inner_text() and "; setup cell 3 runs again" in toast.inner_text()
    wait_for_state(page, "partial", timeout_s=15)  # no automatic build here: the toolbar still offers one

    item(page).locator(BUTTON).click()  # builds the rest of the setup
    wait_for_state(page, "ready", timeout_s=300)
    wait_for_points(page, {1: "current", 2: "current", 3: "current"})
    assert "d = 4" in notebook.read_text()
    shots.take_notebook(page, "restore-points-rebuilt", doc=True)


def test_a_hidden_notebook_stops_polling_until_it_is_shown_again(lab: Lab, browser_page: Page) -> None:
    tiny_notebook(lab.root, "tiny.ipynb", ["x = 1"], 0, ["print(x)"])
    page = browser_page
    asked: list[str] = []  # the notebook path of each status request, in order
    page.on(
        "request",
        lambda request: (
            asked.append(json.loads(request.post_data or "{}").get("path", ""))
            if "/snapkernel/api/status" in request.url
            else None
        ),
    )
    open_notebook(page, lab, "tiny.ipynb")
    wait_for_state(page, "none", timeout_s=120)
    tiny = page.evaluate(f"{CURRENT}.id")
    page.evaluate("window.jupyterapp.commands.execute('docmanager:open', {path: 'numpy_setup.ipynb'})")
    page.wait_for_function(f"{SHOWN}?.context.path === 'numpy_setup.ipynb'", timeout=60_000)
    wait_for_state(page, "none", timeout_s=60)
    # A poll of numpy_setup.ipynb asked after the switch: a request tiny.ipynb had on its way came before it.
    before = len(asked)
    wait_in_page(page, lambda: "numpy_setup.ipynb" in asked[before:], 30, "the shown notebook is not polled")
    asked.clear()
    # Three more polls of the shown notebook span two poll intervals: a still-polled tiny.ipynb would ask meanwhile.
    wait_in_page(page, lambda: asked.count("numpy_setup.ipynb") >= 3, 60, "the shown notebook is polled no more")
    assert "tiny.ipynb" not in asked, asked
    page.evaluate(f"window.jupyterapp.shell.activateById('{tiny}')")
    wait_in_page(page, lambda: "tiny.ipynb" in asked, 10, "tiny.ipynb is shown again but not polled")


def test_failed_requests_show_an_error_and_the_state_recovers(lab: Lab, browser_page: Page, shots: Screenshots) -> None:
    # The build runs its setup cell until the test lets it end (a file `go` beside the notebook).
    gated = "import pathlib, time\nwhile not pathlib.Path('go').exists():\n    time.sleep(0.1)\nslept = True"
    tiny_notebook(lab.root, "slow.ipynb", [gated], 0, ["print(slept)"])
    page = browser_page
    failing = {"builds/ID": False, "status": False}
    failures = {"builds/ID": 0, "status": 0}

    def inject(kind: str):
        def handle(route: Route) -> None:
            if failing[kind]:
                failures[kind] += 1
                route.fulfill(status=500, content_type="application/json", body='{"message": "injected failure"}')
            else:
                route.continue_()

        return handle

    page.route("**/snapkernel/api/builds/*", inject("builds/ID"))
    page.route("**/snapkernel/api/status*", inject("status"))
    open_notebook(page, lab, "slow.ipynb")
    wait_for_state(page, "none", timeout_s=120)

    # A build's progress request fails: the item says so, with the last known state, then follows the build again.
    failing["builds/ID"] = True
    item(page).locator(BUTTON).click()
    wait_for_state(page, "error", timeout_s=30)
    text = tooltip(page)
    assert "500 injected failure" in text and "Last known: building" in text, text
    shots.take_notebook(page, "state-error", doc=True)
    failing["builds/ID"] = False
    wait_for_state(page, "building", timeout_s=30)
    (lab.root / "go").touch()
    wait_for_state(page, "ready", timeout_s=120)
    assert failures["builds/ID"] >= 1

    # The status request fails for a while: an error, kept while it fails, gone once it succeeds.
    failing["status"] = True
    wait_for_state(page, "error", timeout_s=30)
    assert "Last known: snapshot ready" in tooltip(page)
    failed = failures["status"]
    item(page).locator(BUTTON).click()  # in the error state a click asks again at once: it fails again
    wait_in_page(page, lambda: failures["status"] > failed, 30, "the click did not ask for the status again")
    wait_for_state(page, "error", timeout_s=5)
    failing["status"] = False
    item(page).locator(BUTTON).click()  # in the error state a click asks again at once
    wait_for_state(page, "ready", timeout_s=10)
    assert failures["status"] >= 1


def test_toolbar_says_when_the_server_extension_is_missing(
    lab_without_extension: Lab, browser_page: Page, shots: Screenshots
) -> None:
    lab = lab_without_extension
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.cells.append(nbformat.v4.new_code_cell("x = 1"))
    nbformat.write(book, lab.root / "plain.ipynb")
    page = browser_page
    open_notebook(page, lab, "plain.ipynb")
    wait_for_state(page, "unavailable", timeout_s=60)
    assert "snapkernel server extension not available" in tooltip(page)
    assert item(page).inner_text().strip() == "No snapkernel server"
    shots.take_notebook(page, "state-extension-missing", doc=True)


def test_settings_hide_the_toolbar_item_and_set_the_poll_interval(tmp_path: Path, browser_page: Page) -> None:
    settings = {
        "@jupyterlab/notebook-extension:panel": {"toolbar": [{"name": "snapkernelStatus", "disabled": True}]},
        "jupyter-snapkernel:plugin": {"pollInterval": 0.5},
    }
    with start_lab(tmp_path, settings=settings) as lab:
        tiny_notebook(lab.root, "tiny.ipynb", ["x = 1", "y = 2"], 1, ["print(x)"])
        page = browser_page
        asked: list[float] = []
        page.on(
            "request",
            lambda request: asked.append(time.monotonic()) if "/snapkernel/api/status" in request.url else None,
        )
        page.goto(f"{lab.url}/lab/tree/tiny.ipynb?token={lab.token}")
        page.wait_for_function(f"{SHOWN}?.context?.isReady", timeout=120_000)
        wait_for_marks(page, setup=[1, 2], end=2)  # marked without the toolbar item
        assert panel(page).locator(".jp-NotebookPanel-toolbar .jp-Toolbar-item").count() > 3
        assert panel(page).locator(TOOLBAR_ITEM).count() == 0
        asked.clear()
        wait_in_page(page, lambda: len(asked) >= 5, 30, "fewer than 5 status requests with pollInterval 0.5 s")
        gaps = sorted(later - earlier for earlier, later in itertools.pairwise(asked))
        assert gaps[len(gaps) // 2] < 1.5, f"status requests {gaps} s apart: not the 0.5 s set (the default is 3 s)"


# When the notebook's kernel started, as the server extension reports it (restored or cold).
START_TIME_JS = (
    f"fetch('/snapkernel/api/kernels/' + {CURRENT}.sessionContext.session.kernel.id)"
    ".then(r => r.json()).then(j => j.started || 0)"
)


def test_a_snapshot_only_in_a_shared_root_shows_ready_and_restores(tmp_path: Path, browser_page: Page) -> None:
    """An administrator's shared snapshot: the toolbar says ready (shared), and the kernel is restored from it."""
    from jupyter_snapkernel.notebook.builder import build_snapshot
    from jupyter_snapkernel.paths import open_store

    shared_root = tmp_path / "course-snapshots"
    (tmp_path / "notebooks").mkdir()
    notebook = tiny_notebook(tmp_path / "notebooks", "course.ipynb", ["x = 41", "y = x + 1"], 1, ["print(y)"])
    manifest = build_snapshot(notebook, open_store(shared_root, shared=True))
    with start_lab(tmp_path, environment={"SNAPKERNEL_SHARED_ROOTS": str(shared_root)}) as lab:
        assert open_store(lab.store).list() == [], "the user's own store is empty"
        page = browser_page
        open_notebook(page, lab, "course.ipynb")
        wait_for_state(page, "ready", timeout_s=120)
        assert "Shared snapshot ready" in tooltip(page)
        wait_for_marks(page, setup=[1, 2], end=2)
        wait_for_idle_kernel(page)
        kernel_id = page.evaluate(f"{CURRENT}.sessionContext.session.kernel.id")
        request = urllib.request.Request(f"{lab.url}/snapkernel/api/kernels/{kernel_id}?token={lab.token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            start = json.loads(response.read())
        assert (start["start"], start["snapshot"]) == ("restored", manifest.id), start


def start_time(page: Page) -> float:
    """When the current notebook's kernel started (seconds since the epoch)."""
    return float(page.evaluate(f"async () => await ({START_TIME_JS})"))


def test_setup_slider_moved_after_restart_and_run_all_changes_the_kernel_value(
    lab: Lab, browser_page: Page, shots: Screenshots
) -> None:
    from jupyter_snapkernel.notebook.builder import build_snapshot
    from jupyter_snapkernel.paths import open_store
    from tests.helpers import write_notebook

    setup = "import ipywidgets as widgets\nslider = widgets.IntSlider(value=3, min=0, max=10)\ndisplay(slider)"
    notebook = write_notebook(lab.root / "widgets.ipynb", [setup], marked=0, after=["print('value', slider.value)"])
    build_snapshot(notebook, open_store(lab.store))
    page = browser_page
    open_notebook(page, lab, "widgets.ipynb")
    wait_for_state(page, "ready", timeout_s=120)
    wait_for_idle_kernel(page)
    first_kernel_start = start_time(page)
    page.evaluate(f"{CURRENT}.sessionContext.session.kernel.restart()")
    page.wait_for_function(f"async () => (await ({START_TIME_JS})) > {first_kernel_start}", timeout=120_000)
    wait_for_idle_kernel(page)

    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    cells = panel(page).locator(".jp-Cell")
    handle = cells.first.locator(".noUi-handle")
    handle.wait_for(timeout=60_000)  # the replayed setup output renders the slider from the restored kernel
    handle.focus()
    for _ in range(4):
        handle.press("ArrowRight")
    last = cells.last
    for _ in range(20):  # the frontend sends the new value; rerun the cell until the kernel has it
        last.click()
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell')")
        wait_for_idle_kernel(page)
        if "value 7" in last.locator(".jp-OutputArea-output").inner_text():
            break
        time.sleep(0.1)
    shots.take_page(page, "restored-widget")
    assert last.locator(".jp-OutputArea-output").inner_text().strip() == "value 7"


CORPUS = REPO / "tests" / "notebooks" / "corpus"
CHECK_DIALOG = ".jp-Dialog [data-snapkernel-check]"
# A hook that changes a value only in restored kernels: a restore difference made on purpose.
HOOKED_SETUP = [
    "from jupyter_snapkernel import after_restore\nthreshold = 10\n"
    "@after_restore\ndef loosen():\n    global threshold\n    threshold = 11"
]
HOOKED_AFTER = ["print('rows kept:', 3)", "print('threshold', threshold)", "print('after it')"]


def check_result(page: Page, timeout_s: float = 600) -> Locator:
    """Wait for the check's result dialog (a check builds, then runs the notebook cold and restored twice)."""
    dialog = page.locator(CHECK_DIALOG)
    dialog.wait_for(timeout=timeout_s * 1000)
    return dialog


def around(*targets: Locator, margin: float = 6) -> FloatRect:
    """The smallest region of the page that shows every target, with a margin."""
    boxes = [target.bounding_box() for target in targets]
    assert all(box is not None for box in boxes), "an element to screenshot is not visible"
    left = min(box["x"] for box in boxes if box) - margin
    top = min(box["y"] for box in boxes if box) - margin
    right = max(box["x"] + box["width"] for box in boxes if box) + margin
    bottom = max(box["y"] + box["height"] for box in boxes if box) + margin
    return FloatRect(x=max(left, 0), y=max(top, 0), width=right - max(left, 0), height=bottom - max(top, 0))


def run_from_palette(page: Page, label: str, timeout_s: float = 60) -> None:
    """Run a command by its label from the command palette, as a person does.

    The palette closes when the focus moves (as it does while a notebook and its kernel load): open it again.
    """
    search = page.locator(".lm-CommandPalette-input")
    active = page.locator(".lm-CommandPalette-item.lm-mod-active", has_text=label)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            page.evaluate("window.jupyterapp.commands.execute('apputils:activate-command-palette')")
            search.fill(label, timeout=2000)
            active.wait_for(timeout=2000)
            search.press("Enter")  # the palette re-renders its items as commands change: no click on one
            return
        except PlaywrightTimeoutError:
            assert time.monotonic() < deadline, f"the command palette did not run {label!r} in {timeout_s} s"


def test_check_from_the_toolbar_menu_and_the_palette_shows_equal_or_the_differing_cell(
    tmp_path: Path, browser_page: Page, shots: Screenshots
) -> None:
    page = browser_page
    (tmp_path / "notebooks").mkdir()
    shutil.copytree(CORPUS / "data", tmp_path / "notebooks" / "data")
    shutil.copyfile(CORPUS / "sales_by_region.ipynb", tmp_path / "notebooks" / "sales_by_region.ipynb")
    with start_lab(tmp_path) as lab:
        tiny_notebook(lab.root, "hooked.ipynb", HOOKED_SETUP, 0, HOOKED_AFTER)

        # A corpus notebook, checked from the toolbar item's menu: restored runs equal cold runs.
        open_notebook(page, lab, "sales_by_region.ipynb")
        wait_for_state(page, "none", timeout_s=120)
        item(page).locator(".jp-SnapKernel-menuButton").click()
        entry = page.locator(".jp-SnapKernel-menu .lm-Menu-item", has_text="Check Restored Against Cold")
        entry.wait_for(timeout=10_000)
        shots.clip(page, "check-menu", around(item(page), page.locator(".jp-SnapKernel-menu")), doc=True)
        entry.click()
        page.wait_for_selector("text=Checking sales_by_region.ipynb", timeout=30_000)
        equal = check_result(page)
        assert equal.get_attribute("data-snapkernel-check") == "equal", equal.inner_text()
        assert equal.inner_text().startswith("equal: 2 restored runs showed what 2 cold runs showed")
        assert (
            page.locator(".jp-Dialog .jp-Dialog-header").inner_text() == "sales_by_region.ipynb: restored equals cold"
        )
        shots.take(page.locator(".jp-Dialog .jp-Dialog-content"), "check-equal", doc=True)
        page.locator(".jp-Dialog button", has_text="Close").click()
        wait_for_state(page, "ready", timeout_s=60)  # the check built the snapshot the toolbar now offers

        # The notebook with a hook that changes a value only after restores, checked from the palette.
        open_notebook(page, lab, "hooked.ipynb")  # the workspace reopens the corpus notebook too
        page.wait_for_function(f"() => {SHOWN}?.context?.path === 'hooked.ipynb'", timeout=60_000)
        wait_for_idle_kernel(page)
        panel(page).locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()  # focus it: commands act on it
        run_from_palette(page, "Check Restored Against Cold")
        different = check_result(page)
        header = page.locator(".jp-Dialog .jp-Dialog-header").inner_text()
        assert header == "hooked.ipynb: restored differs from cold", different.inner_text()
        assert different.get_attribute("data-snapkernel-check") == "different", different.inner_text()
        cell = different.locator(".jp-SnapKernel-checkDifference")
        assert cell.get_attribute("data-snapkernel-cell") == "3"  # after the title
        assert "First differing cell: cell 4 print('threshold', threshold)" in cell.inner_text()
        assert cell.locator(".jp-SnapKernel-checkCold").inner_text().strip() == "threshold 10"
        assert cell.locator(".jp-SnapKernel-checkRestored").inner_text().strip() == "threshold 11"
        assert "@after_restore" in cell.locator(".jp-SnapKernel-checkHint").inner_text()
        shots.take(page.locator(".jp-Dialog .jp-Dialog-content"), "check-different", doc=True)
        page.locator(".jp-Dialog button", has_text="Go to Cell").click()
        page.wait_for_function(f"() => {SHOWN}?.content.activeCellIndex === 3", timeout=10_000)
