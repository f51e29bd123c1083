"""The soak script (test/faults/soak.py) end to end, compressed: every fault kind twice in ~2 minutes.

The real soak is 30 minutes (python test/faults/soak.py); this run keeps the script working and
checks what it measures: the server survives, both robots keep deciding after every fault, and
threads do not accumulate. Memory growth needs the long run to mean anything and is only printed.
"""

import pytest

from harness import only_in_full_fault_runs
from soak import Soak, report

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600), only_in_full_fault_runs("2-minute soak")]


def test_robots_keep_deciding_through_every_kind_of_fault(tmp_path):
    soak = Soak(str(tmp_path))
    try:
        result = soak.run(minutes=2.0, fault_every=8.0, sample_every=8.0)
    finally:
        soak.close()
    print(report(result))
    assert result["server_alive"] and not result["fault_errors"], result["fault_errors"]
    assert len({name for _, name in result["faults"]}) == len(soak.faults)
    samples = result["samples"]
    assert samples[-1]["decisions_ok"] - samples[-4]["decisions_ok"] > 20  # still deciding at the end
    assert result["growth_percent"]["server_threads"] <= 0 and result["growth_percent"]["robots_threads"] <= 0
    for robot, counts in result["per_robot"].items():
        assert counts["ok"] > 10 * counts["failed"], (robot, counts)  # failures only around faults
