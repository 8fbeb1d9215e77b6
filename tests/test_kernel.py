"""The runner's kernel client: a reply queued while its wake-up was missed is read within one poll slice."""

from __future__ import annotations

import asyncio
from queue import Empty

import pytest
import zmq
import zmq.asyncio
from jupyter_client.session import Session

from qpmlib.book import kernel
from qpmlib.book.kernel import POLL_SLICE_S, RunnerKernelManager, SlicedPollChannel


class _MissedWakeUps:
    """A socket as pyzmq's asyncio one behaves after a missed wake-up: a poll sees what is queued only at its end.

    ``arrives_at`` is when (seconds on the fake clock) the message is queued; None: never.
    """

    def __init__(self, frames, arrives_at, clock):
        self.frames, self.arrives_at, self.clock = frames, arrives_at, clock
        self.polls: list[int] = []

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        self.clock[0] += timeout_ms / 1000  # the whole timeout passes: the edge that would end it early was lost
        return int(self.arrives_at is not None and self.clock[0] >= self.arrives_at)

    async def recv_multipart(self, **kwargs):
        return self.frames


@pytest.fixture
def channel(monkeypatch):
    """Makes a SlicedPollChannel on a fake socket and a fake clock: (channel, socket, message id)."""
    clock = [0.0]
    monkeypatch.setattr(kernel.time, "monotonic", lambda: clock[0])
    session = Session()
    msg = session.msg("execute_reply", {"status": "ok"})
    frames = session.serialize(msg)

    context = zmq.asyncio.Context()
    real = context.socket(zmq.DEALER)

    def make(arrives_at):
        ch = SlicedPollChannel(real, session)
        ch.socket = sock = _MissedWakeUps(frames, arrives_at, clock)
        return ch, sock, msg["header"]["msg_id"]

    yield make
    real.close(linger=0)
    context.term()


def test_a_queued_reply_is_read_after_one_slice_not_after_the_timeout(channel):
    ch, sock, msg_id = channel(arrives_at=0.0)
    reply = asyncio.run(ch.get_msg(timeout=300))
    assert reply["header"]["msg_id"] == msg_id
    assert sock.polls == [round(POLL_SLICE_S * 1000)]  # a single 300 s poll would have slept out its timeout


def test_a_wait_without_timeout_polls_in_slices_until_the_reply_comes(channel):
    ch, sock, msg_id = channel(arrives_at=2.5 * POLL_SLICE_S)
    assert asyncio.run(ch.get_msg(timeout=None))["header"]["msg_id"] == msg_id
    assert sock.polls == [round(POLL_SLICE_S * 1000)] * 3


def test_the_timeout_is_kept_exactly_when_nothing_arrives(channel):
    ch, sock, _ = channel(arrives_at=None)
    with pytest.raises(Empty):
        asyncio.run(ch.get_msg(timeout=2.5 * POLL_SLICE_S))
    assert sum(sock.polls) == round(2500 * POLL_SLICE_S)
    assert max(sock.polls) <= POLL_SLICE_S * 1000


def test_a_message_that_arrives_at_the_last_moment_is_still_read(channel):
    ch, sock, msg_id = channel(arrives_at=2.5 * POLL_SLICE_S)
    assert asyncio.run(ch.get_msg(timeout=2.5 * POLL_SLICE_S))["header"]["msg_id"] == msg_id


def test_the_runner_kernel_manager_makes_clients_with_sliced_channels():
    client = RunnerKernelManager(kernel_name="python3").client()
    try:
        for name in ("shell_channel", "iopub_channel", "stdin_channel", "control_channel"):
            assert isinstance(getattr(client, name), SlicedPollChannel), name
    finally:
        client.stop_channels()
