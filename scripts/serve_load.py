"""A bounded load test of ``heed serve``: N requests from T threads to a server on 127.0.0.1.

Starts its own server on a free local port (a model directory or ``random:gpt2-tiny``), or targets one
already running (``--port``). Prints served / failed, p50 / p99 latency, the wall time, and how many
batches the worker decoded (own server only); with ``--stream``, also p50 / p99 of the time to the first
piece of text::

    PYTHONPATH=src python scripts/serve_load.py --model random:gpt2-tiny --requests 32 --threads 8 [--stream]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time


def ask(port: int, body: dict, timeout: float) -> tuple[bool, float, float | None]:
    """Whether a request was answered, its latency, and (streamed) the time to its first piece of text."""
    start = time.perf_counter()
    first = None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        if not body.get("stream"):
            ok = reply.status == 200 and "choices" in json.loads(reply.read())
        else:
            ok = False
            while reply.status == 200 and (line := reply.readline()):
                if line.startswith(b"data: [DONE]"):
                    ok = True
                    break
                if first is None and line.startswith(b"data: ") and \
                        json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
        conn.close()
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        ok = False
    return ok, time.perf_counter() - start, first


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:gpt2-tiny")
    p.add_argument("--port", type=int, help="a heed serve already listening on 127.0.0.1:PORT (default: start one)")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--stream", action="store_true", help="stream the answers; report the time to the first text")
    args = p.parse_args(argv)
    if not (1 <= args.threads <= 64 and 1 <= args.requests <= 1024):
        p.error("--threads must be 1-64 and --requests 1-1024")

    server = None
    port = args.port
    if port is None:
        from heed.config import GenerateConfig, ServeConfig
        from heed.serve import Server, bind, make_service

        cfg = ServeConfig(max_batch=args.max_batch, max_new_tokens=args.max_tokens, timeout=args.timeout)
        server = Server(make_service(args.model, cfg, GenerateConfig(), device="cpu"), bind("127.0.0.1", 0)).start()
        port = server.port
    prompts = [f"Write one sentence about the number {i}." for i in range(args.requests)]
    results: list[tuple[bool, float, float | None]] = []
    lock = threading.Lock()
    next_index = iter(range(args.requests))

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            body = {"messages": [{"role": "user", "content": prompts[i]}], "max_tokens": args.max_tokens,
                    "stream": args.stream}
            outcome = ask(port, body, args.timeout)
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = [s for ok, s, _ in results if ok]
    firsts = [f for ok, _, f in results if ok and f is not None]
    served = len(latencies)
    print(f"model {args.model}: {args.requests} requests from {args.threads} threads, max_tokens {args.max_tokens}"
          + (", streamed" if args.stream else ""))
    print(f"served {served}, failed {len(results) - served}, wall {wall:.2f} s, {served / wall:.2f} requests/s")
    if latencies:
        print(f"latency p50 {statistics.median(latencies):.3f} s, p99 {percentile(latencies, 0.99):.3f} s")
    if firsts:
        print(f"first text p50 {statistics.median(firsts):.3f} s, p99 {percentile(firsts, 0.99):.3f} s "
              f"({len(firsts)} answers with text)")
    if server is not None:
        b = server.service.batcher
        print(f"batches decoded {b.batches}, largest {b.largest_batch} (--max-batch {args.max_batch})")
        server.stop()
    return 0 if served == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
