"""DecisionScheduler: when the edge decides, with a fake clock (no ROS, no threads, no models)."""

import pytest

from edge_spec_drafter.scheduling import (DecisionScheduler, LinkState, Outcome, SchedulerConfig,
                                          classify_failure)
from specdec.engine.drafter import CloudError
from specdec.protocol import EndReason
from specdec.transport.base import CloudTimeout, TransportError


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def scheduler(instruction="go to the red ball", **config):
    clock = Clock()
    return DecisionScheduler(SchedulerConfig(**config), instruction=instruction, clock=clock), clock


def test_decides_on_a_fresh_frame_newer_than_the_instruction():
    s, clock = scheduler(instruction="")
    s.frame("old frame")
    assert s.poll(clock()) is None  # no instruction yet
    clock.t += 0.1
    s.set_instruction("go to the red ball")
    assert s.poll(clock()) is None  # the only frame is older than the instruction
    clock.t += 0.1
    s.frame("new frame")
    job = s.poll(clock())
    assert (job.decision_id, job.instruction, job.frame, job.degraded, job.probe) == \
        (1, "go to the red ball", "new frame", False, False)
    assert s.poll(clock()) is None  # one decision at a time


def test_stale_frame_waits_for_a_new_one():
    s, clock = scheduler(max_frame_age_s=1.0)
    s.frame("f")
    clock.t += 1.5
    assert s.poll(clock()) is None
    s.frame("g")
    assert s.poll(clock()).frame == "g"


def test_next_decision_when_the_controller_ends_this_one_only():
    s, clock = scheduler()
    s.frame("f")
    job = s.poll(clock())
    s.finished(job, Outcome.VALID)
    assert s.poll(clock()) is None  # waits for the controller
    s.action_ended(job.decision_id - 1)  # an older decision's status: not ours
    s.action_ended(job.decision_id, estop=True)  # e-stopped: do not decide
    assert s.poll(clock()) is None
    s.action_ended(job.decision_id)
    assert s.poll(clock()).decision_id == 2


def test_a_stalled_motion_is_carried_into_the_next_decision_only():
    s, clock = scheduler()
    s.frame("f")
    job = s.poll(clock())
    assert not job.last_move_blocked  # nothing moved yet
    s.finished(job, Outcome.VALID)
    s.action_ended(job.decision_id - 1, stalled=True)  # an older decision's status: not ours
    s.action_ended(job.decision_id, stalled=True)
    job = s.poll(clock())
    assert job.last_move_blocked
    s.finished(job, Outcome.VALID)
    s.action_ended(job.decision_id)  # this one completed
    job = s.poll(clock())
    assert not job.last_move_blocked
    s.finished(job, Outcome.VALID)
    s.action_ended(job.decision_id, stalled=True)
    clock.t += 0.1
    s.set_instruction("now the blue box")  # a new task starts from a clean slate
    s.frame("g")
    assert not s.poll(clock()).last_move_blocked


def test_turning_in_place_is_counted_once_per_decision_until_the_robot_walks():
    """The prompt's ``{turned}``: the degrees the controller turned in place since it last
    translated. The controller repeats its status, so a decision counts once; a walk or a new
    instruction starts the count over; ``done``/``stop`` leave it."""
    s, clock = scheduler()
    for verb, value, expected in (("left", 60.0, 0.0), ("right", 45.0, 60.0), ("stop", 0.0, 105.0),
                                  ("forward", 0.5, 105.0), ("left", 60.0, 0.0)):
        s.frame("f")
        job = s.poll(clock())
        assert job.turned_deg == expected, (verb, job.turned_deg)
        s.finished(job, Outcome.VALID)
        for _ in range(3):  # the same status, again and again
            s.action_ended(job.decision_id, verb=verb, value=value)
        s.action_ended(job.decision_id - 1, verb="left", value=90.0)  # an older decision's: not ours
    assert s.turned_deg == 60.0
    clock.t += 0.1
    s.set_instruction("now the blue box")
    s.frame("g")
    assert s.poll(clock()).turned_deg == 0.0


def test_done_waits_for_a_new_instruction():
    s, clock = scheduler()
    s.frame("f")
    s.finished(s.poll(clock()), Outcome.DONE)
    s.action_ended(1)
    s.request()
    assert s.poll(clock()) is None and s.waiting_for_instruction
    clock.t += 0.1
    s.set_instruction("now the blue box")
    s.frame("g")
    assert s.poll(clock()).instruction == "now the blue box"


def next_decision(s, clock, step=0.25):
    """Advance the clock (a fresh frame each step) until a job is due; returns it and the wait."""
    start = clock.t
    while True:
        s.frame("f")
        job = s.poll(clock())
        if job is not None:
            return job, clock.t - start
        clock.t += step


def test_refusals_back_off_exponentially_and_reset_on_success():
    s, clock = scheduler(refusal_backoff_s=1.0, refusal_backoff_max_s=4.0)
    job, _ = next_decision(s, clock)
    waits = []
    for _ in range(5):
        s.finished(job, Outcome.REFUSED, "UNAUTHORIZED")
        s.action_ended(job.decision_id)  # the controller reports the invalid decision at once
        job, waited = next_decision(s, clock)
        waits.append(waited)
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert s.link == LinkState.REFUSED
    assert s.take_link_change().startswith("decision refused: UNAUTHORIZED")
    assert s.take_link_change() is None  # reported once, not once per refusal
    s.finished(job, Outcome.VALID)
    assert s.link == LinkState.OK and s.failures == 0 and s.take_link_change()
    s.action_ended(job.decision_id)
    assert next_decision(s, clock)[1] == 0.0  # no backoff left


def test_cloud_loss_with_stop_retries_every_cloud_retry_s():
    s, clock = scheduler(on_cloud_loss="stop", cloud_retry_s=0.5)
    s.frame("f")
    s.finished(s.poll(clock()), Outcome.CLOUD_LOST, "CloudTimeout")
    assert s.link == LinkState.LOST
    clock.t += 0.4
    s.frame("f")
    assert s.poll(clock()) is None  # retried by itself, no trigger needed, but not before 0.5 s
    clock.t += 0.1
    job = s.poll(clock())
    assert job is not None and not job.degraded and not job.probe
    s.finished(job, Outcome.VALID)
    assert s.link == LinkState.OK


def test_cloud_loss_with_edge_only_degrades_probes_and_returns():
    s, clock = scheduler(on_cloud_loss="edge_only", cloud_retry_s=0.5)
    s.frame("f")
    s.finished(s.poll(clock()), Outcome.CLOUD_LOST, "cloud unreachable")
    assert s.link == LinkState.DEGRADED and "degraded" in s.take_link_change()
    degraded = s.poll(clock())  # at once, with the draft alone
    assert degraded.degraded and not degraded.probe
    s.finished(degraded, Outcome.VALID)
    assert s.link == LinkState.DEGRADED  # a degraded success says nothing about the cloud
    clock.t += 0.5
    probe = s.poll(clock())
    assert probe.probe
    s.finished(probe, Outcome.PROBE_FAILED)
    assert s.poll(clock()) is None
    clock.t += 0.5
    s.frame("f")
    probe = s.poll(clock())
    assert probe.probe
    s.finished(probe, Outcome.PROBE_OK)
    assert s.link == LinkState.OK and "back to speculative" in s.take_link_change()
    job = s.poll(clock())  # a full decision at once, without waiting for the controller
    assert job is not None and not job.degraded


def test_a_failing_draft_keeps_degraded_mode():
    s, clock = scheduler(on_cloud_loss="edge_only")
    s.frame("f")
    s.finished(s.poll(clock()), Outcome.CLOUD_LOST)
    s.finished(s.poll(clock()), Outcome.REFUSED, "model error")
    assert s.link == LinkState.DEGRADED and s.failures == 1


def test_failure_classification():
    assert classify_failure(CloudTimeout("silent")) == Outcome.CLOUD_LOST
    assert classify_failure(TransportError("down")) == Outcome.CLOUD_LOST
    assert classify_failure(CloudError(int(EndReason.TIMEOUT), "cloud unreachable")) == Outcome.CLOUD_LOST
    assert classify_failure(CloudError(int(EndReason.UNAUTHORIZED))) == Outcome.REFUSED
    assert classify_failure(CloudError(int(EndReason.TOKENIZER_MISMATCH))) == Outcome.REFUSED
    assert classify_failure(RuntimeError("model")) == Outcome.REFUSED


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="on_cloud_loss"):
        SchedulerConfig(on_cloud_loss="drive_blind")
    with pytest.raises(ValueError, match="cloud_retry_s"):
        SchedulerConfig(cloud_retry_s=0)


def test_next_job_blocks_until_a_frame_arrives():
    import threading
    import time

    s = DecisionScheduler(SchedulerConfig(), instruction="go")
    assert s.next_job(timeout=0.1) is None  # no frame
    threading.Timer(0.1, s.frame, args=("f",)).start()
    job = s.next_job(timeout=5.0)
    assert job is not None and job.frame == "f"
    s.stop()
    t = time.monotonic()
    assert s.next_job(timeout=5.0) is None and time.monotonic() - t < 1.0


def test_the_node_reads_a_stall_stop_from_the_controllers_status():
    """The edge node's status callback (real ActionStatus messages, no node spun): only a stop whose
    cause is ``stall`` marks the next prompt blocked."""
    from types import SimpleNamespace

    from edge_cloud_vlm_msgs.msg import ActionStatus
    from edge_spec_drafter.node import EdgeSpecDrafter

    s, clock = scheduler()
    node = SimpleNamespace(scheduler=s)
    for state, cause, blocked in ((ActionStatus.STATE_STOPPED, ActionStatus.CAUSE_STALL, True),
                                  (ActionStatus.STATE_COMPLETED, ActionStatus.CAUSE_COMPLETED, False),
                                  (ActionStatus.STATE_STOPPED, ActionStatus.CAUSE_DEADMAN, False)):
        s.frame("f")
        job = s.poll(clock())
        s.finished(job, Outcome.VALID)
        EdgeSpecDrafter._on_status(node, ActionStatus(state=state, stop_cause=cause, decision_id=job.decision_id,
                                                      verb="right", value=30.0))
        assert s.last_move_blocked == blocked, (state, cause)
    assert s.turned_deg == 90.0  # the verbs and values it ran: three turns of 30 degrees
