"""jupyter_kernel_test's conformance suite, run alike against ipykernel, snapkernel cold and snapkernel restored."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jupyter_kernel_test as jkt
from jupyter_client.manager import start_new_kernel

from jupyter_snapkernel.notebook.builder import build_snapshot
from jupyter_snapkernel.paths import open_store
from tests.helpers import write_notebook

# Background builds and spare kernels outlive a test class; these tests start their kernels themselves.
QUIET = {"SNAPKERNEL_AUTO_BUILD": "0", "SNAPKERNEL_SPARE_KERNELS": "0"}


class PythonKernelSamples(jkt.KernelTests):
    """What every Python kernel here must answer alike (the samples of jupyter_kernel_test's ipykernel test).

    Tuples: the suite only iterates over the samples, and class attributes shared by subclasses stay immutable.
    """

    kernel_name = "python3"
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = ({"text": "zi", "matches": {"zip"}},)
    complete_code_samples = ("1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n")
    incomplete_code_samples = ("print('''hello", "def f(x):\n  x*2")
    invalid_code_samples = ("import = 7q",)
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result = (
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    )
    code_display_data = (
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))", "mime": "text/latex"},
    )
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class TestIPyKernel(PythonKernelSamples):
    """The reference: plain ipykernel."""


class SnapKernelSamples(PythonKernelSamples):
    """snapkernel started through its provisioner for a notebook with a setup section."""

    kernel_name = "snapkernel"
    cold = False
    start: dict[str, Any]

    @classmethod
    def setUpClass(cls) -> None:
        cls.folder = Path(tempfile.mkdtemp(prefix="snapkernel-conformance-"))
        cls.saved_environ = dict(os.environ)
        os.environ.update({**QUIET, "SNAPKERNEL_STORE": str(cls.folder / "store")})
        notebook = write_notebook(cls.folder / "conformance.ipynb", ["import math\nsetup_done = True"], marked=0)
        if not cls.cold:
            build_snapshot(notebook, open_store())
        env = {**os.environ, "JPY_SESSION_NAME": str(notebook), **({"SNAPKERNEL_COLD": "1"} if cls.cold else {})}
        cls.km, cls.kc = start_new_kernel(kernel_name=cls.kernel_name, env=env, cwd=str(cls.folder))
        cls.start = cls.km.provisioner.start_report

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        os.environ.clear()
        os.environ.update(cls.saved_environ)
        shutil.rmtree(cls.folder, ignore_errors=True)

    def test_started_as_intended(self) -> None:
        """The class's kernel is restored (or cold) as the class says."""
        self.assertEqual(self.start["start"], "cold" if self.cold else "restored", self.start)


class TestSnapKernelCold(SnapKernelSamples):
    """snapkernel started cold."""

    cold = True


class TestSnapKernelRestored(SnapKernelSamples):
    """snapkernel restored from the notebook's snapshot."""


del PythonKernelSamples, SnapKernelSamples  # bases: collected only through their subclasses
