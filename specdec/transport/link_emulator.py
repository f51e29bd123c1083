"""User-space WAN link emulator: a TCP proxy that adds delay, jitter, bandwidth limits and loss.

This kernel has no netem qdisc, so the emulated network between edge and cloud is a proxy in
front of the verifier server: the edge connects to the proxy, the proxy to the server. Each
direction is emulated independently:

* one-way delay + uniform jitter per chunk, never reordering (TCP delivers in order: a chunk
  is released no earlier than the one before it);
* bandwidth: a chunk occupies the link for len/bandwidth seconds (serialisation delay);
* loss: TCP hides a lost segment behind a retransmission, so a "lost" chunk is delivered
  after an extra retransmission timeout (max(200 ms, 2 x RTT), as Linux's minimum RTO).

``drop_connections()`` cuts every proxied connection at once (a network outage as the edge
sees it: the stream ends, reconnecting works).

Run standalone: ``python -m specdec.transport.link_emulator --listen 9001 --upstream 127.0.0.1:9000
--delay-ms 25``. Stops by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from dataclasses import dataclass


@dataclass
class LinkProfile:
    one_way_delay_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_mbps: float = 0.0  # 0 = unlimited
    loss: float = 0.0  # probability that a chunk needs a retransmission
    seed: int = 0

    @property
    def rto_s(self) -> float:
        return max(0.2, 4 * self.one_way_delay_ms / 1000.0)


class _Direction:
    """One direction of the link: schedules each chunk's delivery time."""

    def __init__(self, profile: LinkProfile, rng: random.Random):
        self.profile = profile
        self.rng = rng
        self.link_free_at = 0.0  # when the previous chunk finished serialising
        self.last_delivery = 0.0  # deliveries stay in order
        self.bytes = 0

    def delivery_time(self, size: int, now: float) -> float:
        p = self.profile
        start = max(now, self.link_free_at)
        if p.bandwidth_mbps > 0:
            start += size * 8 / (p.bandwidth_mbps * 1e6)
        self.link_free_at = start
        delay = p.one_way_delay_ms / 1000.0
        if p.jitter_ms:
            delay += self.rng.uniform(-p.jitter_ms, p.jitter_ms) / 1000.0
        if p.loss and self.rng.random() < p.loss:
            delay += p.rto_s
        at = max(start + max(delay, 0.0), self.last_delivery)
        self.last_delivery = at
        self.bytes += size
        return at


class LinkEmulator:
    """Asyncio TCP proxy ``listen_port -> upstream`` with an emulated link in between."""

    def __init__(self, upstream_host: str, upstream_port: int, profile: LinkProfile,
                 listen_host: str = "127.0.0.1", listen_port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.profile = profile
        self.listen = (listen_host, listen_port)
        self.port = None
        self.bytes_up = 0
        self.bytes_down = 0
        self._rng = random.Random(profile.seed)
        self._links = set()  # (client writer, upstream writer) of each proxied connection
        self._server = None
        self._loop = None
        self._thread = None

    async def _pump(self, reader, writer, direction: _Direction, counter: str):
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                at, chunk = await queue.get()
                if chunk is None:
                    break
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
                setattr(self, counter, getattr(self, counter) + len(chunk))

        task = asyncio.ensure_future(deliver())
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                queue.put_nowait((direction.delivery_time(len(chunk), time.monotonic()), chunk))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            queue.put_nowait((0.0, None))
            try:
                await task
            except (ConnectionError, OSError):
                pass
            writer.close()

    async def _handle(self, client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        up = _Direction(self.profile, self._rng)
        down = _Direction(self.profile, self._rng)
        link = (client_writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(client_reader, up_writer, up, "bytes_up"),
                self._pump(up_reader, client_writer, down, "bytes_down"),
                return_exceptions=True,
            )
        finally:
            self._links.discard(link)

    def drop_connections(self) -> int:
        """Cut every proxied connection now (both ends see the stream end); returns how many."""

        async def cut():
            links = list(self._links)
            for pair in links:
                for writer in pair:
                    writer.transport.abort()
            return len(links)

        return asyncio.run_coroutine_threadsafe(cut(), self._loop).result(5)

    async def start_async(self):
        self._server = await asyncio.start_server(self._handle, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    # Thread helpers, for tests and benchmarks that are not asyncio programs.
    def start(self) -> int:
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start_async())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="link-emulator", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.port

    def stop(self):
        if self._loop is None:
            return

        async def shutdown():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True, help="local port to listen on")
    parser.add_argument("--upstream", required=True, help="host:port of the verifier server")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long")
    args = parser.parse_args(argv)
    host, port = args.upstream.rsplit(":", 1)
    emulator = LinkEmulator(host, int(port), LinkProfile(args.delay_ms, args.jitter_ms, args.bandwidth_mbps,
                                                         args.loss, args.seed), listen_port=args.listen)

    async def run():
        await emulator.start_async()
        print(f"link emulator :{emulator.port} -> {args.upstream} ({emulator.profile})", flush=True)
        await asyncio.sleep(args.max_seconds)

    asyncio.run(run())


if __name__ == "__main__":
    main()
