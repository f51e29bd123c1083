"""verifier_server: the cloud verifier behind an authenticated WebSocket endpoint (no ROS).

    verifier_server --model models/go2_vlm/target --exits models/go2_vlm/target/early_exit.safetensors \
        --tokens config/robot_tokens.yaml --port 8765 [--tls-cert cert.pem --tls-key key.pem]

The tokens file maps robot ids to the sha256 of their tokens (never the tokens themselves):

    robots:
      go2-demo: {token_sha256: "<hex>"}

``verifier_server --hash-token`` reads a token on stdin and prints its digest.

What one robot or peer may hold (connections, sessions, prompt and image size, queued
messages) is bounded by :class:`specdec.transport.websocket.ServerLimits`; each limit is a flag
of the same name (``--max-sessions-per-robot 4``). Off loopback, serve TLS (``--tls-cert``,
``--tls-key``): without it the server warns loudly, because robot tokens would cross the network
in clear text. Behind a load balancer (deploy/haproxy.cfg) every connection comes from the
balancer's address: raise ``--max-connections-per-address`` there and cap per source at the
balancer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
from typing import Optional

import yaml

log = logging.getLogger("verifier_server")

TOKENS_FORMAT = """tokens file (--tokens), YAML: each robot id and the sha256 hex digest of its token
(make one with: echo -n "$TOKEN" | verifier_server --hash-token):

    robots:
      go2-demo: {token_sha256: "<64 hex digits>"}
      go2-lab:  {token_sha256: "<64 hex digits>"}
"""


def load_tokens(path: str) -> dict:
    """robot id -> token digest; ValueError with one line naming the fault otherwise."""
    try:
        with open(path) as handle:
            doc = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{where}; see verifier_server --help for the format") from None
    robots = doc.get("robots") if isinstance(doc, dict) else None
    if not isinstance(robots, dict) or not robots:
        raise ValueError(f"{path}: expected 'robots: {{<robot id>: {{token_sha256: <hex>}}}}' "
                         f"(see verifier_server --help)")
    tokens = {}
    for robot_id, entry in robots.items():
        digest = entry.get("token_sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise ValueError(f"{path}: robot {robot_id!r} needs token_sha256: <64 hex digits> "
                             f"(verifier_server --hash-token makes one)")
        tokens[str(robot_id)] = digest.lower()
    return tokens


def _flags(parser, cls, title: str) -> None:
    """One flag per field of a settings dataclass, so the CLI and the code name each setting alike."""
    group = parser.add_argument_group(title)
    for item in dataclasses.fields(cls):
        group.add_argument("--" + item.name.replace("_", "-"), type=type(item.default), default=item.default,
                           help=f"{item.metadata['help']} (default {item.default})")


def _from_flags(cls, args):
    """The ``cls`` the parsed flags ask for (its ``check()`` refuses a value out of range)."""
    return cls(**{item.name: getattr(args, item.name) for item in dataclasses.fields(cls)}).check()


def build_arg_parser():
    parser = argparse.ArgumentParser(prog="verifier_server", description=__doc__.splitlines()[0],
                                     epilog=TOKENS_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="target model: a folder, or a hub id read from the local HF cache (offline)")
    parser.add_argument("--exits", default="", help="early-exit adapter file ('' = no early exits)")
    parser.add_argument("--exit-layer", type=int, default=-1,
                        help="the one exit layer sending hints (-1: every layer in the file, progressive hints)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (fp32, bf16, fp16)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tokens", help="YAML file of robot ids and token digests (format below)")
    parser.add_argument("--tls-cert", default="")
    parser.add_argument("--tls-key", default="")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--max-seconds", type=float, default=0, help="stop after this long (0: never)")
    parser.add_argument("--hash-token", action="store_true", help="print sha256 of a token read from stdin")
    parser.add_argument("--compute-profile", default="",
                        help="emulate the cloud device of this profile file (profiles/*.yaml): every target forward "
                             "takes that device's time; passes this machine cannot finish in time are counted as "
                             "overruns (see specdec.models.compute_profile)")
    parser.add_argument("--stats-file", default="",
                        help="write the verifier's totals and the compute clock's summary here (JSON) on SIGUSR1 "
                             "and at exit")
    from specdec.engine.verifier_settings import VerifierSettings
    from specdec.transport.websocket import ServerLimits

    _flags(parser, ServerLimits, "connection limits (see specdec.transport.websocket.ServerLimits)")
    _flags(parser, VerifierSettings, "verifier: sessions, batching (see specdec.engine.verifier_settings)")
    return parser


def bounded_malloc(arenas: int = 2, mmap_threshold: int = 4 * 1024 * 1024,
                   trim_threshold: Optional[int] = 64 * 1024 * 1024,
                   trim_every_s: float = 10.0) -> bool:
    """Keep glibc's heap from ratcheting RSS up after bursts of large requests (test/faults/soak.py):
    cap the malloc arenas (like MALLOC_ARENA_MAX; each connection thread would otherwise grow a heap
    of its own), and fix the mmap threshold, so a block of this size or more (camera frames, oversized
    prompts) is mapped on its own and returned to the OS when freed. Left dynamic, glibc raises the
    threshold after the first large free, and later large blocks fragment the heap. Fixing it also
    stops glibc's dynamic trim threshold, which then falls to 128 KiB: every free at the heap's top
    would hand the pages back and the next forward pass fault them in again. With the old settings
    (256 KiB, trim at 128 KiB) a 110-token SmolLM2 prefill took 233 ms against 205-215 with glibc's
    defaults or these, a 5-token verification 72-75 ms against 69 (``scripts/experiments/server_heap.py``,
    2026-12-05, 2-core Xeon; in the server itself 245-256 ms against 210-220). So the heap's top keeps
    up to ``trim_threshold``, a pass's activations reuse the heap, and a daemon thread gives the heap's
    free pages back every ``trim_every_s`` (``malloc_trim``). Returns whether glibc took the settings."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        applied = libc.mallopt(-8, arenas) == 1  # M_ARENA_MAX
        # M_MMAP_THRESHOLD (setting it also stops the dynamic raise) and M_TRIM_THRESHOLD
        applied = libc.mallopt(-3, mmap_threshold) == 1 and applied
        if trim_threshold is not None:  # None: glibc's own (what a fixed mmap threshold leaves it: 128 KiB)
            applied = libc.mallopt(-1, trim_threshold) == 1 and applied
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return False

    def give_back_free_pages() -> None:
        # free pages inside the heap (what small frees leave between live blocks) go back to the OS
        while True:
            time.sleep(trim_every_s)
            try:
                trim(0)
            except Exception:  # never ends the thread silently: logged, and it keeps trimming
                log.exception("malloc_trim failed (continuing)")

    threading.Thread(target=give_back_free_pages, name="malloc-trim", daemon=True).start()
    return applied


def main(argv=None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from specdec.transport.websocket import VerifierServer, hash_token

    if args.hash_token:
        print(hash_token(sys.stdin.readline().strip()))
        return 0
    bounded_malloc()
    if not args.model or not args.tokens:
        print("verifier_server: --model and --tokens are required", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from specdec.models.loading import freeze_loaded_objects

    from .target import build_verifier

    try:
        tokens = load_tokens(args.tokens)
        from specdec.engine.verifier_settings import VerifierSettings
        from specdec.transport.websocket import ServerLimits

        limits = _from_flags(ServerLimits, args)
        verifier = build_verifier(args.model, args.exits or None, args.exit_layer, args.dtype, args.device,
                                  settings=_from_flags(VerifierSettings, args))
        clock = None
        if args.compute_profile:
            from specdec.models.compute_profile import ComputeClock, ProfilePair

            clock = ComputeClock(ProfilePair.load(args.compute_profile).cloud)
            verifier.target.use_clock(clock)
        freeze_loaded_objects()  # no 100+ ms full collections of the target's objects mid-pass
    except Exception as exc:  # missing/mismatched files: say which and stop
        print(f"verifier_server: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.stats_file:  # a side channel for benchmarks: snapshots on demand, the totals at exit
        signal.signal(signal.SIGUSR1, lambda *_: write_stats(args.stats_file, verifier, clock))
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key or None)
    server = VerifierServer(tokens, args.host, args.port, ssl_context=context, limits=limits)
    try:
        port = server.start()
    except OSError as exc:  # port in use, address not on this machine
        print(f"verifier_server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    scheme = "wss" if context else "ws"
    print(f"verifier_server: listening on {scheme}://{args.host}:{port} for {len(tokens)} robot(s)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.max_seconds:
        threading.Timer(args.max_seconds, stop.set).start()
    started = time.monotonic()
    try:
        verifier.serve(server, stop)
    finally:
        server.close()
        s = verifier.stats
        print(f"verifier_server: stopped after {time.monotonic() - started:.1f} s; {s}", flush=True)
        if clock is not None:
            print(f"verifier_server: compute clock ({clock.profile.device}, {clock.profile.model}): "
                  f"{clock.summary()}", flush=True)
        if args.stats_file:
            write_stats(args.stats_file, verifier, clock, final=True)
    return 0


def write_stats(path: str, verifier, clock=None, final: bool = False) -> None:
    """The verifier's totals and the compute clock's summary as JSON, replaced atomically;
    ``written_ns`` lets a reader wait for a fresh one. Runs in the SIGUSR1 handler too, so it takes
    no lock (the numbers may be one pass apart)."""
    doc = {"written_ns": time.time_ns(), "final": final, "verifier": dataclasses.asdict(verifier.stats),
           "clock": clock.summary() if clock is not None else None,
           "profile": {"device": clock.profile.device, "model": clock.profile.model} if clock is not None else None}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(doc, handle)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
