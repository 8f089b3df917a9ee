"""One pub/sub subscription per process to the cancel channel (DESIGN §6), and the worker's
other broadcasts on the same connection (the promoters' ``due`` channel).

The store PUBLISHes a run id when its cancellation is requested; the listener hands it to the
worker at once, which cancels the run's task if it holds it. Pub/sub is fire-and-forget, so the
heartbeat's ``cancel`` answer is the fallback when a message is missed (reconnect, restart), and
``on_subscribed`` runs after every (re)subscription so a listener can look at what it may have
missed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from agentstream.core.cluster import ready, subscriber
from agentstream.core.codec import as_text
from agentstream.core.store import Redis

log = logging.getLogger("agentstream.worker")


class CancelListener:
    def __init__(
        self,
        client: Redis,
        channel: str,
        on_cancel: Callable[[str], None],
        *,
        others: Mapping[str, Callable[[str], None]] | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._on_cancel = on_cancel
        self._others = dict(others or {})
        self._on_subscribed = on_subscribed
        self.ready = asyncio.Event()  # subscribed: requests from now on are heard
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        """Listen until cancelled; reconnect after a lost connection."""
        delay_s = 0.1
        failures = 0
        while not self._stopped:
            # on a cluster: one node's connection (PUBLISH reaches every node), the next node
            # after each failure, so a dead node the slot map still names is not retried forever
            pubsub = subscriber(self._client, failures)
            try:
                await ready(self._client)
                await pubsub.subscribe(self._channel, *self._others)
                for _ in range(1 + len(self._others)):  # the confirmations come first (ignored):
                    await pubsub.get_message(timeout=1.0)  # only then is Redis listening for us
                self.ready.set()
                if self._on_subscribed is not None:
                    self._on_subscribed()
                delay_s = 0.1
                while not self._stopped:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data, channel = message["data"], as_text(message["channel"])
                        handler = self._on_cancel if channel == self._channel else self._others.get(channel)
                        if handler is not None:
                            handler(as_text(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready.clear()
                failures += 1
                log.warning("cancel listener lost its connection (%s); heartbeats cover the gap", exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
                except Exception:
                    pass
