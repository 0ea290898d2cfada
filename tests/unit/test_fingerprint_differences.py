"""Fingerprints: what differs between the recorded and the current one, and stable digests."""

from __future__ import annotations

from snapkernel_engine.fingerprint import differences, digest, environment_fingerprint


def test_identical_fingerprints_have_no_differences() -> None:
    """Equal fields, whatever their order: nothing differs."""
    assert differences({"arch": "x86_64", "kernel": "6.1"}, {"kernel": "6.1", "arch": "x86_64"}) == []


def test_changed_added_and_removed_fields_are_named_sorted() -> None:
    """A changed value, a field only recorded and a field only current are all named, in order."""
    recorded = {"python": "3.11", "cpu": "A", "gone": 1, "same": True}
    current = {"python": "3.12", "cpu": "A", "new": "B", "same": True}
    assert differences(recorded, current) == ["gone", "new", "python"]


def test_a_nested_change_is_named_by_its_top_level_field() -> None:
    """A GPU change inside the nvidia inventory is reported as `nvidia`."""
    recorded = {"nvidia": {"driver": "570.1", "gpus": [{"name": "H100"}]}, "arch": "x86_64"}
    current = {"nvidia": {"driver": "570.2", "gpus": [{"name": "H100"}]}, "arch": "x86_64"}
    assert differences(recorded, current) == ["nvidia"]


def test_a_field_recorded_as_none_differs_from_a_missing_field_only_by_value() -> None:
    """A field that is None on one side and absent on the other reads the same (both give None)."""
    assert differences({"extra": None}, {}) == []


def test_digests_are_independent_of_key_order_and_change_with_the_data() -> None:
    """digest() canonicalises JSON: key order does not count, values do."""
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1, "b": [1, 2]}) != digest({"a": 1, "b": [2, 1]})
    assert len(digest([])) == 64


def test_the_environment_fingerprint_differs_only_in_changed_extra_facts() -> None:
    """Two fingerprints of this interpreter differ only where the caller's extra facts differ."""
    before = environment_fingerprint({"snapkernel_sha256": "old"})
    after = environment_fingerprint({"snapkernel_sha256": "new"})
    assert differences(before, after) == ["snapkernel_sha256"]
    assert {"python", "prefix", "python_version", "implementation", "distributions_sha256"} <= before.keys()
