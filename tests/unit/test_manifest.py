"""Manifests: written and read back unchanged, and refused with a reason when malformed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from snapkernel_engine.errors import VerificationError
from snapkernel_engine.manifest import FORMAT_VERSION, FileRecord, Manifest


def manifest() -> Manifest:
    """A manifest with every field set."""
    return Manifest(
        id="20240101-abcdef",
        key="setup-hash",
        created="2024-01-01T00:00:00+00:00",
        size_bytes=4096,
        rss_bytes=8192,
        dump_duration_s=0.25,
        pid=1234,
        versions={"criu": "4.2", "snapkernel": "1.0"},
        environment={"python": "/usr/bin/python3", "distributions_sha256": "0" * 64},
        hardware={"arch": "x86_64", "nvidia": {"gpus": []}},
        files={"pages-1.img": FileRecord(4000, "a" * 64), "core-1.img": FileRecord(96, "b" * 64)},
        pipes={"control": "pipe:[42]"},
        labels={"setup_s": "1.5"},
        cuda_pids=[1234],
        inputs={"files": {"data.csv": "c" * 64}},
    )


def data() -> dict[str, Any]:
    """The manifest as the JSON data of manifest.json."""
    parsed: dict[str, Any] = json.loads(manifest().to_json())
    return parsed


def test_a_manifest_reads_back_equal_to_what_was_written() -> None:
    """to_json then from_json gives an equal manifest, file records included."""
    original = manifest()
    again = Manifest.from_json(original.to_json())
    assert again == original
    assert again.files["core-1.img"] == FileRecord(96, "b" * 64)


def test_manifest_json_is_stable_text() -> None:
    """Sorted keys and a final newline: the same manifest always gives the same bytes."""
    text = manifest().to_json()
    assert text.endswith("}\n")
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert json.loads(text)["format"] == FORMAT_VERSION


def test_optional_fields_default_when_absent() -> None:
    """A manifest without pipes, labels, CUDA processes or inputs reads with empty ones."""
    written = data()
    for name in ("pipes", "labels", "cuda_pids", "inputs"):
        del written[name]
    read = Manifest.from_json(json.dumps(written))
    assert (read.pipes, read.labels, read.cuda_pids, read.inputs) == ({}, {}, [], {})


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_other_manifest_formats_are_unsupported(version: object) -> None:
    """Only this format is read; the message names the one found."""
    written = data()
    if version is None:
        del written["format"]
    else:
        written["format"] = version
    with pytest.raises(VerificationError) as caught:
        Manifest.from_json(json.dumps(written), origin="snapshots/x/manifest.json")
    assert str(caught.value) == f"snapshots/x/manifest.json: unsupported manifest format {version!r}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "manifest: not valid JSON"),
        ("[]", "manifest: expected a JSON object"),
        ('"manifest"', "manifest: expected a JSON object"),
    ],
)
def test_text_that_is_not_a_manifest_object_is_refused(text: str, problem: str) -> None:
    """Broken JSON and JSON that is not an object are refused before any field is read."""
    with pytest.raises(VerificationError, match="^" + problem.replace("(", r"\(")):
        Manifest.from_json(text)


def _without(name: str) -> dict[str, Any]:
    """The manifest's data without one field."""
    written = data()
    del written[name]
    return written


@pytest.mark.parametrize(
    "written",
    [
        {**data(), "files": ["pages-1.img"]},
        {**data(), "files": {"pages-1.img": {"size": 1}}},
        {**data(), "files": {"pages-1.img": {"size": "big", "sha256": "a" * 64}}},
        {**data(), "files": {"pages-1.img": None}},
        {**data(), "unknown_field": 1},
        _without("pid"),
        _without("files"),
    ],
    ids=["files-list", "record-no-hash", "size-not-number", "record-null", "unknown-field", "no-pid", "no-files"],
)
def test_malformed_manifests_are_refused_as_malformed(written: dict[str, Any]) -> None:
    """Missing fields, unknown fields and file records of the wrong type raise VerificationError, never
    a KeyError or TypeError."""
    with pytest.raises(VerificationError, match=r"^m\.json: malformed manifest \("):
        Manifest.from_json(json.dumps(written), origin="m.json")


def test_file_record_fields_are_coerced_to_their_types() -> None:
    """A size written as a numeric string reads as an int."""
    written = {**data(), "files": {"pages-1.img": {"size": "4000", "sha256": "a" * 64}}}
    assert Manifest.from_json(json.dumps(written)).files == {"pages-1.img": FileRecord(4000, "a" * 64)}
