"""Which pages an incremental image keeps: runs of pages equal to the parent's, compared a megabyte at a time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from snapkernel_engine.incremental import COMPARED_PAGES, PAGE_SIZE, Pages, runs_of, same_pages


@pytest.fixture
def pages_of() -> Iterator[object]:
    """Makes Pages of a temporary file holding the given bytes (closed after the test)."""
    import tempfile

    fds: list[int] = []

    def make(data: bytes) -> Pages:
        with tempfile.TemporaryFile() as handle:
            handle.write(data)
            handle.flush()
            fds.append(os.dup(handle.fileno()))
        return Pages(fds[-1], 0)

    yield make
    for fd in fds:
        os.close(fd)


def test_runs_of_equal_verdicts_cover_every_page_once_in_order() -> None:
    verdicts = [True, True, False, True, False, False]
    assert list(runs_of(verdicts)) == [(0, 2, True), (2, 1, False), (3, 1, True), (4, 2, False)]
    assert list(runs_of([])) == []


def test_pages_are_compared_one_by_one_only_where_a_block_differs(pages_of: Any) -> None:
    pages = COMPARED_PAGES + 3
    theirs = bytearray(b"\1" * pages * PAGE_SIZE)
    mine = bytearray(theirs)
    mine[5 * PAGE_SIZE] = 2  # one byte of page 5
    mine[(COMPARED_PAGES + 1) * PAGE_SIZE + 17] = 3  # one byte of the second block's page 1
    verdicts = same_pages(pages_of(bytes(mine)), pages_of(bytes(theirs)), pages)
    assert [index for index, same in enumerate(verdicts) if not same] == [5, COMPARED_PAGES + 1]


def test_no_page_equals_a_page_the_parent_does_not_hold(pages_of: Any) -> None:
    assert same_pages(pages_of(b"\0" * 2 * PAGE_SIZE), None, 2) == [False, False]
