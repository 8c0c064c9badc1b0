"""``edge_agent.local_training.load_training_modules`` freezes what it loaded out of the garbage collector's reach.

Each case runs in a fresh interpreter: the freeze is once per process, and this test process has torch loaded and
its own objects tracked already. The oracle is the interpreter's own gc counters, read in the child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_child(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_loaded_modules_leave_the_collected_generations() -> None:
    got = run_child("""
        import gc, json
        from edge_agent.local_training import load_training_modules
        load_training_modules()
        tracked_after_first = len(gc.get_objects())
        frozen_after_first = gc.get_freeze_count()
        import torch  # noqa: F401 - already loaded: the call above imported it
        load_training_modules()  # a later round: no second freeze
        print(json.dumps({"frozen": frozen_after_first, "tracked": tracked_after_first,
                          "frozen_again": gc.get_freeze_count()}))
    """)
    # torch and the learning core are well over 50 000 tracked objects; after the freeze only what was created
    # since (a handful) is left for the collector to scan
    assert got["frozen"] > 50_000
    assert got["tracked"] < 1_000
    assert got["frozen_again"] == got["frozen"]


def test_objects_made_after_the_freeze_are_still_collected() -> None:
    got = run_child("""
        import gc, json, weakref
        from edge_agent.local_training import load_training_modules
        load_training_modules()

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector can free it
        probe = weakref.ref(a)
        del a, b
        gc.collect()
        print(json.dumps({"freed": probe() is None}))
    """)
    assert got["freed"]


def test_garbage_loaded_before_the_freeze_is_not_kept() -> None:
    # a cycle that is already garbage when the modules load is collected, not frozen forever
    got = run_child("""
        import gc, json, weakref

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        probe = weakref.ref(a)
        del a, b
        from edge_agent.local_training import load_training_modules
        load_training_modules()
        print(json.dumps({"freed": probe() is None}))
    """)
    assert got["freed"]
