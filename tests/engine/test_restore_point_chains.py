import os
from pathlib import Path
from snapkernel_engine import SnapshotStore
from tests.helpers import Conversation, Workload, pipes_for_restore

def test_redump(store: SnapshotStore, workload: Workload) -> None:
    first = store.take_snapshot(workload.pid, "k1", pipes={"stdin": 0, "stdout": 1}, leave_running=True)
    handed, to_tree, from_tree, close = pipes_for_restore()
    tree = store.restore_snapshot(first.id, key="k1", pipes=handed)
    for fd in close: os.close(fd)
    conv = Conversation(tree, to_tree, from_tree)
    print(conv.ask("rewrite 10"))
    second = store.take_snapshot(tree.pid, "k2", pipes={"stdin": 0, "stdout": 1}, leave_running=True, parent=first)
    print(second.size_bytes, first.size_bytes)
    print(conv.ask("rewrite 3"))
    third = store.take_snapshot(tree.pid, "k3", pipes={"stdin": 0, "stdout": 1}, leave_running=False, parent=second)
    tree.kill()
    handed, to_tree, from_tree, close = pipes_for_restore()
    t3 = store.restore_snapshot(third.id, key="k3", pipes=handed)
    for fd in close: os.close(fd)
    c3 = Conversation(t3, to_tree, from_tree)
    print(c3.ask("report"), third.size_bytes)
    t3.kill()
    print(store.delete(first.id))
