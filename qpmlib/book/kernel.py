"""The kernel client the book runner gives papermill: its waits for a message never outlast the message.

nbclient waits for a cell's reply with ``await socket.poll(timeout)`` on pyzmq's asyncio sockets, which learn of
a new message from libzmq's edge-triggered file descriptor. When that edge is consumed before the event loop
sees it (libzmq drains it on any send or ``ZMQ_EVENTS`` read on the socket), the wait sleeps on although the
reply is already queued, and only the final check at the timeout reads it. The book runner met this on smoke
chapters: a cell that computes in seconds was reported done after exactly the cell limit (300 s), a five-minute
stall in ``make test``.

:class:`SlicedPollChannel` cuts every wait into polls of at most :data:`POLL_SLICE_S` seconds, each ending with
that same check, so a queued message is read at most one slice late; timeouts keep their meaning.
:class:`RunnerKernelManager` is papermill's ``kernel_manager_class`` with clients built on that channel::

    papermill.execute_notebook(..., kernel_manager_class=RunnerKernelManager)
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from jupyter_client import AsyncKernelManager
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from traitlets import DottedObjectName, Type

__all__ = ["POLL_SLICE_S", "SlicedPollChannel", "RunnerKernelClient", "RunnerKernelManager"]

#: Longest single poll (seconds): the most a message that arrived unnoticed waits before it is read.
POLL_SLICE_S = 0.1


class SlicedPollChannel(AsyncZMQSocketChannel):
    """An asyncio kernel channel whose ``get_msg`` polls in slices of at most :data:`POLL_SLICE_S` seconds."""

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message on this channel.

        Args:
            timeout: seconds to wait at most; None waits as long as it takes.

        Returns:
            The deserialised message.

        Raises:
            queue.Empty: no message arrived within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = POLL_SLICE_S if left is None else min(POLL_SLICE_S, left)
            if await self.socket.poll(round(step * 1000)):
                return await self._recv()
            if left is not None and left <= POLL_SLICE_S:
                raise Empty


class RunnerKernelClient(AsyncKernelClient):
    """The asyncio kernel client, with :class:`SlicedPollChannel` on every ZMQ channel."""

    shell_channel_class = Type(SlicedPollChannel)
    iopub_channel_class = Type(SlicedPollChannel)
    stdin_channel_class = Type(SlicedPollChannel)
    control_channel_class = Type(SlicedPollChannel)


class RunnerKernelManager(AsyncKernelManager):
    """nbclient's default kernel manager, whose clients are :class:`RunnerKernelClient`."""

    client_class = DottedObjectName("qpmlib.book.kernel.RunnerKernelClient")
    client_factory = Type(RunnerKernelClient, klass=AsyncKernelClient)
