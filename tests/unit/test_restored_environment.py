"""The rule of a restored kernel's environment: the launch, the kernel start's variables, the setup's changes."""

from __future__ import annotations

from jupyter_snapkernel.kernel.revive import BuildEnvironment, EnvironmentChanges, restored_environment

INLINE = "module://matplotlib_inline.backend_inline"


def test_setup_changes_win_and_untouched_launch_variables_keep_the_launch_value() -> None:
    """Set, changed and removed by the setup: as the setup left them; the rest: as this launch has them."""
    build_launch = {"KEEP": "build", "CHANGED": "build", "REMOVED": "build", "SNAPKERNEL_STORE": "/build/store"}
    after_setup = {"KEEP": "build", "CHANGED": "setup", "OMP_NUM_THREADS": "1", "SNAPKERNEL_STORE": "/build/store"}
    setup = EnvironmentChanges.between(build_launch, after_setup)
    launch = {"KEEP": "launch", "CHANGED": "launch", "REMOVED": "launch", "OMP_NUM_THREADS": "8"}
    restored = restored_environment(launch, BuildEnvironment(EnvironmentChanges(), setup))
    assert restored == {"KEEP": "launch", "CHANGED": "setup", "OMP_NUM_THREADS": "1", "MPLBACKEND": INLINE}


def test_kernel_start_variables_apply_and_mplbackend_only_where_the_launch_leaves_it_empty() -> None:
    """IPython's TERM/PAGER override the launch, as in a cold kernel; ipykernel's MPLBACKEND is only a default."""
    kernel = EnvironmentChanges({"PAGER": "cat", "TERM": "xterm-color", "MPLBACKEND": INLINE})
    build = BuildEnvironment(kernel, EnvironmentChanges())
    assert restored_environment({"TERM": "dumb", "MPLBACKEND": "agg"}, build) == {
        "PAGER": "cat",
        "TERM": "xterm-color",
        "MPLBACKEND": "agg",
    }
    assert restored_environment({"MPLBACKEND": ""}, build)["MPLBACKEND"] == INLINE
    # A build launched with its own MPLBACKEND recorded no default: a launch without one still gets ipykernel's.
    assert (
        restored_environment({}, BuildEnvironment(EnvironmentChanges(), EnvironmentChanges()))["MPLBACKEND"] == INLINE
    )


def test_setup_that_chose_a_backend_keeps_it_over_the_launch() -> None:
    """os.environ["MPLBACKEND"] set by the setup is the setup's choice, whatever the launch says."""
    setup = EnvironmentChanges.between({"MPLBACKEND": INLINE}, {"MPLBACKEND": "svg"})
    assert restored_environment({"MPLBACKEND": "agg"}, BuildEnvironment(EnvironmentChanges(), setup)) == {
        "MPLBACKEND": "svg"
    }


def test_changes_of_setup_stretches_add_up_as_one_setup_did_them() -> None:
    """Restore points split the setup in stretches: their changes, one after the other, equal the whole's."""
    start = {"KEEP": "1", "GONE": "x", "BACK": "old"}
    middle = {"KEEP": "1", "BACK": "mid", "NEW": "a"}
    end = {"KEEP": "2", "GONE": "y", "NEW": "a"}
    combined = EnvironmentChanges.between(start, middle).then(EnvironmentChanges.between(middle, end))
    assert combined == EnvironmentChanges.between(start, end)
