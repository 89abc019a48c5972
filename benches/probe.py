#!/usr/bin/env python3
"""An open-loop probe: one request on a new connection every 1/RATE s for SECS s, whatever the
earlier ones are doing, each with its own 10 s timeout; every latency is a real request's (no
closed-loop client waiting on a stalled connection, no correction). What a new user arriving at
a steady rate sees. usage: probe.py PORT SECS RATE OUT_FILE"""
import asyncio
import json
import sys
import time

port, secs, rate, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
lat, errors = [], {}


async def one():
    t = time.monotonic()
    try:
        async def go():
            r, w = await asyncio.open_connection("127.0.0.1", port)
            try:
                w.write(REQ)
                data = await r.read()
            finally:
                w.close()
            if not data.startswith(b"HTTP/1.1 200"):
                raise ValueError("status")
        await asyncio.wait_for(go(), 10)
        lat.append(time.monotonic() - t)
    except Exception as e:  # noqa: BLE001 - every failure is counted by kind
        k = type(e).__name__
        errors[k] = errors.get(k, 0) + 1


async def main():
    t0 = time.monotonic()
    tasks, i = [], 0
    while True:
        at = t0 + i / rate
        if at - t0 >= secs:
            break
        await asyncio.sleep(max(0, at - time.monotonic()))
        tasks.append(asyncio.ensure_future(one()))
        i += 1
    await asyncio.gather(*tasks)


asyncio.run(main())
lat.sort()


def q(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None


with open(out, "w") as f:
    json.dump({"sent": len(lat) + sum(errors.values()), "ok": len(lat), "errors": errors,
               "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": lat[-1] * 1000 if lat else None,
               "over_1s": sum(1 for x in lat if x > 1)}, f)
