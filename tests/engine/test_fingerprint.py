"""The environment fingerprint: cheap to ask for again, and new as soon as a distribution is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from snapkernel_engine.fingerprint import _distributions_digest, distributions_digest


def install_distribution(folder: Path, name: str, version: str) -> None:
    """Put a distribution's metadata into a folder of the import path, as an installer does."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_installing_or_upgrading_a_distribution_changes_the_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached digest follows what is installed: a new distribution, then a new version of it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = distributions_digest()
    assert distributions_digest() == before, "asked again with nothing installed: the same"
    install_distribution(tmp_path, "snapkernel_probe", "1.0")
    installed = distributions_digest()
    assert installed != before
    for old in tmp_path.glob("snapkernel_probe-1.0.dist-info/*"):
        old.unlink()
    (tmp_path / "snapkernel_probe-1.0.dist-info").rmdir()
    install_distribution(tmp_path, "snapkernel_probe", "2.0")
    assert distributions_digest() not in {before, installed}
    assert str(tmp_path) in sys.path


def test_files_and_folders_without_distributions_keep_the_cached_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written beside the distributions, or a folder of modules put on the import path (pycriu adds one
    when imported), installs nothing: the digest is not worked out again."""
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "site").mkdir()
    install_distribution(tmp_path / "site", "snapkernel_probe", "1.0")
    before = distributions_digest()
    computed = _distributions_digest.cache_info().misses
    (tmp_path / "site" / "notes.txt").write_text("not a distribution")
    (tmp_path / "modules").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    assert distributions_digest() == before
    assert _distributions_digest.cache_info().misses == computed
