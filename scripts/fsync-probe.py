"""fsync latency of the disk under DIR: writes 4 KiB and fsyncs it, again and again, for
SECONDS, and prints one line of JSON (count, p50/p99/p99.9/max in ms, and the stalls over
50 ms). A durable acknowledgement waits for one such fsync, so their tail bounds any durable
store's acceptance latency on this disk, whatever the store does.

    python3 scripts/fsync-probe.py DIR SECONDS
"""

import json
import os
import sys
import time

directory, seconds = sys.argv[1], float(sys.argv[2])
path = os.path.join(directory, "fsync-probe.bin")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
block = b"\0" * 4096
lat = []
end = time.monotonic() + seconds
try:
    i = 0
    while time.monotonic() < end:
        os.pwrite(fd, block, (i % 1024) * 4096)
        i += 1
        t = time.perf_counter()
        os.fsync(fd)
        lat.append(time.perf_counter() - t)
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()
n = len(lat)


def q(p):
    return round(lat[min(n - 1, int(n * p))] * 1000, 2)


print(json.dumps({
    "fsyncs": n, "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999),
    "max_ms": round(lat[-1] * 1000, 1),
    "stalls_over_50ms": sum(1 for x in lat if x > 0.05),
    "stalled_ms": round(sum(x for x in lat if x > 0.05) * 1000),
}))
