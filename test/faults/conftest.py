"""Fault suite (``make faults``): every test that injects a fault carries ``@pytest.mark.faults``.

``make faults`` runs ``pytest -m faults test`` with ``FAULTS_FULL=1``; tests too long for
``make test``'s budget skip themselves unless it is set (``harness.only_in_full_fault_runs``).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: fault-injection tests (issue 17); make faults runs them all")
