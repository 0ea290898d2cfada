"""A server's build list keeps its queued and running builds and only its last finished ones."""

from __future__ import annotations

from pathlib import Path

from jupyter_snapkernel.launch.background_builds import KEPT_BUILDS, BackgroundBuild, BackgroundBuilds


def test_finished_builds_past_the_last_kept_ones_are_forgotten_and_active_ones_never() -> None:
    """After KEPT_BUILDS + 10 finished builds and one running, the oldest 10 finished are gone."""
    builds = BackgroundBuilds()
    running = BackgroundBuild("running", Path("/nb/running.ipynb"), "0" * 64, 1, state="building")
    builds.builds[running.id] = running
    for number in range(KEPT_BUILDS + 10):
        state = "ready" if number % 2 else "failed"
        build = BackgroundBuild(f"b{number}", Path(f"/nb/{number}.ipynb"), f"{number:064x}", 1, state=state)
        builds.builds[build.id] = build
    builds.forget_old_builds()
    assert "running" in builds.builds
    assert [key for key in builds.builds if key != "running"] == [
        f"b{number}" for number in range(10, KEPT_BUILDS + 10)
    ]
