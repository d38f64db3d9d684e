"""The Python baseline of `cargo bench --bench pool`: the same figures, measured with
the standard library's multiprocessing, printed as one JSON object on stdout.

python3 benches/python_baseline.py [--quick]
"""
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

QUICK = "--quick" in sys.argv
REPS = 2 if QUICK else 5


def square(x):
    return x * x


def count(n):
    c = 0
    for _ in range(n):
        c += 1
    return c


def echo(b):
    return b


def median(f):
    # One run that is not counted (a warm-up, as the Rust side also has).
    f()
    return statistics.median(f() for _ in range(REPS))


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_ms(method):
    ctx = mp.get_context(method)

    def once():
        t = time.perf_counter()
        with ctx.Pool(2) as pool:
            # A pool is ready when both workers have answered.
            pool.map(square, range(2), chunksize=1)
            return (time.perf_counter() - t) * 1e3

    return median(once)


def main():
    out = {}
    for method in ("fork", "spawn", "forkserver"):
        out[f"start_ms_{method}"] = start_ms(method)

    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        n = 200 if QUICK else 2000

        def rtt():
            t = time.perf_counter()
            for i in range(n):
                pool.apply_async(square, (i,)).get()
            return (time.perf_counter() - t) / n * 1e6

        out["apply_rtt_us"] = median(rtt)

        n = 2000 if QUICK else 20000

        def map1():
            t = time.perf_counter()
            pool.map(square, range(n), chunksize=1)
            return (time.perf_counter() - t) / n * 1e6

        out["map_chunk1_us_per_task"] = median(map1)

        n = 20000 if QUICK else 400000

        def mapd():
            t = time.perf_counter()
            pool.map(square, range(n))
            return (time.perf_counter() - t) / n * 1e9

        out["map_default_ns_per_task"] = median(mapd)

        # CPU-bound: calibrate one task to about 50 ms, then 8 of them.
        k = 100000
        while True:
            t = time.perf_counter()
            count(k)
            if time.perf_counter() - t > 0.005:
                break
            k *= 2
        per = (time.perf_counter() - t) / k
        k = int(0.05 / per)
        tasks = [k] * 8

        def serial():
            t = time.perf_counter()
            [count(x) for x in tasks]
            return time.perf_counter() - t

        def pooled():
            t = time.perf_counter()
            pool.map(count, tasks, chunksize=1)
            return time.perf_counter() - t

        out["cpu_speedup"] = median(serial) / median(pooled)

        payload = os.urandom(16 << 20)

        def big():
            t = time.perf_counter()
            pool.apply(echo, (payload,))
            return 2 * len(payload) / (time.perf_counter() - t) / 1e6

        out["payload_mb_per_s"] = median(big)
        pids = [c.pid for c in mp.active_children()]
        out["idle_worker_rss_mib"] = statistics.median(rss_mib(p) for p in pids)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
