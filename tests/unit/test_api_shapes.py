"""The REST API's answers and labextension/src/api.ts name the same fields: a field renamed, added or dropped
on one side only fails here."""

from __future__ import annotations

import re

import pytest

from jupyter_snapkernel import answers
from tests.helpers import REPO

API_TS = REPO / "labextension" / "src" / "api.ts"
# Each TypeScript interface, and the TypedDict of the server's answer it declares.
SHAPES = {
    "INotebookStatus": answers.NotebookStatus,
    "IRestorePoint": answers.RestorePointMarker,
    "IBuild": answers.BuildAnswer,
    "IKernelStart": answers.KernelStart,
    "ICheckDifference": answers.CheckDifference,
    "ICheck": answers.CheckAnswer,
    "IServerInfo": answers.ServerInfo,
}
FIELD = re.compile(r"^\s{2}(\w+)\??:", re.MULTILINE)  # `  name: type;` or `  name?: type;`, at the top level


def interface_fields(name: str) -> set[str]:
    """The field names of a TypeScript interface in api.ts (comments and nested object types left out)."""
    source = API_TS.read_text()
    match = re.search(rf"export interface {name} \{{\n(.*?)\n\}}", source, re.DOTALL)
    assert match is not None, f"api.ts declares no interface {name}"
    body = re.sub(r"/\*.*?\*/", "", match.group(1), flags=re.DOTALL)
    return set(FIELD.findall(body))


@pytest.mark.parametrize("interface", sorted(SHAPES))
def test_api_ts_declares_the_fields_the_server_answers(interface: str) -> None:
    """Each interface names exactly the keys of its TypedDict."""
    typed = SHAPES[interface]
    assert interface_fields(interface) == set(typed.__required_keys__ | typed.__optional_keys__)


def test_the_parser_reads_optional_fields_and_skips_comments() -> None:
    """`runs?` counts as a field; a word in a doc comment does not (so the comparison above can fail)."""
    fields = interface_fields("ICheck")
    assert {"runs", "built"} <= fields
    assert "Whether" not in fields
