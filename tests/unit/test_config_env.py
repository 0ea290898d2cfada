"""Administrator settings: their defaults, and SNAPKERNEL_* environment variables as fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets import TraitError
from traitlets.config import Config

from jupyter_snapkernel import env_names
from jupyter_snapkernel.config import (
    DEFAULT_BUILD_TIMEOUT_S,
    DEFAULT_SPARE_IDLE_S,
    DEFAULT_SPARE_MEMORY_BYTES,
    SnapKernelSettings,
    env_flag,
)


def test_without_environment_every_setting_has_its_default(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No SNAPKERNEL_* variable: everything on, sha256 checks, no limits, the store in Jupyter's data dir."""
    clean_environment.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    settings = SnapKernelSettings()
    assert settings.enabled is True
    assert settings.auto_build is True
    assert settings.gpu_state is True
    assert settings.spare_kernels is True
    assert settings.lazy_restore is False
    assert settings.verify == "sha256"
    assert settings.build_timeout == DEFAULT_BUILD_TIMEOUT_S
    assert settings.restore_timeout == 60.0
    assert (settings.quota_bytes, settings.max_snapshots) == (0, 0)
    assert (settings.max_concurrent_builds, settings.max_queued_builds) == (1, 8)
    assert settings.spare_memory_bytes == DEFAULT_SPARE_MEMORY_BYTES
    assert settings.spare_idle_seconds == DEFAULT_SPARE_IDLE_S
    assert settings.shared_roots == []
    assert settings.allowed_kernelspecs == ["snapkernel", "snapkernel-*"]
    assert settings.allows_kernelspec("snapkernel-train") and not settings.allows_kernelspec("python3")
    assert settings.user_store_root == tmp_path / "data" / "snapkernel"


@pytest.mark.parametrize(
    "variable",
    [env_names.ENABLED, env_names.AUTO_BUILD, env_names.GPU_STATE, env_names.SPARE_KERNELS],
)
def test_each_on_off_setting_is_turned_off_by_its_variable(
    clean_environment: pytest.MonkeyPatch, variable: str
) -> None:
    """SNAPKERNEL_ENABLED, _AUTO_BUILD, _GPU_STATE and _SPARE_KERNELS set 0 turn their setting off."""
    trait = {
        env_names.ENABLED: "enabled",
        env_names.AUTO_BUILD: "auto_build",
        env_names.GPU_STATE: "gpu_state",
        env_names.SPARE_KERNELS: "spare_kernels",
    }[variable]
    clean_environment.setenv(variable, "0")
    assert getattr(SnapKernelSettings(), trait) is False


def test_valued_settings_are_read_from_their_variables(clean_environment: pytest.MonkeyPatch) -> None:
    """Verification mode, build timeout, quota and snapshot count come from the environment."""
    clean_environment.setenv(env_names.VERIFY, "size")
    clean_environment.setenv(env_names.BUILD_TIMEOUT, "42.5")
    clean_environment.setenv(env_names.QUOTA_BYTES, "1000000")
    clean_environment.setenv(env_names.MAX_SNAPSHOTS, "3")
    clean_environment.setenv(env_names.MAX_CONCURRENT_BUILDS, "2")
    clean_environment.setenv(env_names.MAX_QUEUED_BUILDS, "0")
    clean_environment.setenv(env_names.SPARE_MEMORY_BYTES, "2000000")
    clean_environment.setenv(env_names.SPARE_IDLE_SECONDS, "7.5")
    settings = SnapKernelSettings()
    assert settings.verify == "size"
    assert settings.build_timeout == 42.5
    assert settings.quota_bytes == 1_000_000
    assert settings.max_snapshots == 3
    assert (settings.max_concurrent_builds, settings.max_queued_builds) == (2, 0)
    assert (settings.spare_memory_bytes, settings.spare_idle_seconds) == (2_000_000, 7.5)


def test_build_limits_below_their_minimum_are_refused(clean_environment: pytest.MonkeyPatch) -> None:
    """No build at a time, or a negative queue, is a configuration error, not a server that never builds."""
    clean_environment.setenv(env_names.MAX_CONCURRENT_BUILDS, "0")
    with pytest.raises(TraitError):
        SnapKernelSettings().max_concurrent_builds  # noqa: B018  (reading it validates it)
    clean_environment.delenv(env_names.MAX_CONCURRENT_BUILDS)
    with pytest.raises(TraitError):
        SnapKernelSettings(max_queued_builds=-1)


def test_shared_roots_are_split_on_commas_and_colons(clean_environment: pytest.MonkeyPatch) -> None:
    """SNAPKERNEL_SHARED_ROOTS takes a comma or colon separated list; empty items are dropped."""
    clean_environment.setenv(env_names.SHARED_ROOTS, "/srv/a,/srv/b:/srv/c,,")
    assert SnapKernelSettings().shared_roots == ["/srv/a", "/srv/b", "/srv/c"]


def test_the_store_variable_is_filled_in_for_the_user(clean_environment: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SNAPKERNEL_STORE with '{username}' gives each JupyterHub user a store of their own."""
    clean_environment.setenv(env_names.STORE, str(tmp_path / "{username}" / "snaps"))
    clean_environment.setenv("JUPYTERHUB_USER", "ada")
    assert SnapKernelSettings().user_store_root == tmp_path / "ada" / "snaps"


def test_an_unknown_verification_mode_is_refused(clean_environment: pytest.MonkeyPatch) -> None:
    """SNAPKERNEL_VERIFY must name a mode the store knows."""
    clean_environment.setenv(env_names.VERIFY, "md5")
    with pytest.raises(TraitError):
        _ = SnapKernelSettings().verify


@pytest.mark.parametrize("variable", [env_names.SPARE_MEMORY_BYTES, env_names.SPARE_IDLE_SECONDS])
def test_a_negative_spare_limit_is_refused(clean_environment: pytest.MonkeyPatch, variable: str) -> None:
    """The spares' memory budget and idle time cannot be negative (0 is the way to say no limit)."""
    clean_environment.setenv(variable, "-1")
    trait = "spare_memory_bytes" if variable == env_names.SPARE_MEMORY_BYTES else "spare_idle_seconds"
    with pytest.raises(TraitError):
        _ = getattr(SnapKernelSettings(), trait)


def test_configuration_wins_over_the_environment(clean_environment: pytest.MonkeyPatch) -> None:
    """A value set in jupyter_server_config.py overrides the environment fallback."""
    clean_environment.setenv(env_names.AUTO_BUILD, "1")
    clean_environment.setenv(env_names.QUOTA_BYTES, "5")
    config = Config({"SnapKernelSettings": {"auto_build": False, "quota_bytes": 7}})
    settings = SnapKernelSettings(config=config)
    assert settings.auto_build is False
    assert settings.quota_bytes == 7


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "No", " off ", "off\n"])
def test_env_flag_reads_false_words_as_off(clean_environment: pytest.MonkeyPatch, value: str) -> None:
    """0/false/no/off, in any case and with surrounding spaces, are off."""
    clean_environment.setenv("SNAPKERNEL_PROBE", value)
    assert env_flag("SNAPKERNEL_PROBE", True) is False


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "enabled"])
def test_env_flag_reads_anything_else_as_on(clean_environment: pytest.MonkeyPatch, value: str) -> None:
    """Every other value is on."""
    clean_environment.setenv("SNAPKERNEL_PROBE", value)
    assert env_flag("SNAPKERNEL_PROBE", False) is True


@pytest.mark.parametrize("fallback", [True, False])
def test_env_flag_without_the_variable_gives_the_fallback(
    clean_environment: pytest.MonkeyPatch, fallback: bool
) -> None:
    """An unset variable leaves the caller's default."""
    assert env_flag("SNAPKERNEL_PROBE", fallback) is fallback


@pytest.mark.parametrize("fallback", [True, False])
def test_env_flag_reads_an_empty_value_as_unset(clean_environment: pytest.MonkeyPatch, fallback: bool) -> None:
    """`SNAPKERNEL_X=` (or only spaces) leaves the caller's default, as if it were not set."""
    clean_environment.setenv("SNAPKERNEL_PROBE", "  ")
    assert env_flag("SNAPKERNEL_PROBE", fallback) is fallback


def test_env_flag_reads_a_launch_environment_of_its_own(clean_environment: pytest.MonkeyPatch) -> None:
    """A kernel launch's environment is read instead of the process's (SNAPKERNEL_COLD=on in it is on)."""
    clean_environment.setenv(env_names.COLD, "off")
    assert env_flag(env_names.COLD, False, {env_names.COLD: "on"}) is True
    assert env_flag(env_names.COLD, False) is False
