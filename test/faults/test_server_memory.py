"""The verifier server's heap settings (glibc): what keeps its RSS from ratcheting up after
bursts of large requests. The growth itself is measured by the soak (test/faults/soak.py)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# run in a process of its own: the settings and the trimming thread last for the process's life
PROBE = """
import threading, time
from cloud_verifier_bridge.server import bounded_malloc
applied = bounded_malloc(trim_every_s=0.01)
time.sleep(0.1)
trimmers = [t for t in threading.enumerate() if t.name == "malloc-trim"]
print(applied, len(trimmers), all(t.is_alive() and t.daemon for t in trimmers))
"""


def test_bounded_malloc_applies_glibc_settings_and_keeps_trimming():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True,
                         cwd=ROOT)
    # glibc took the arena cap and the fixed mmap threshold; one trimming thread, alive after ten rounds
    assert out.stdout.split() == ["True", "1", "True"], out.stdout + out.stderr
