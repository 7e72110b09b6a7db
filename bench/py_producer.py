"""A Python producer through the ctypes package (bindings/python), the
counterpart of celery_client.py's `enqueue`: N x client.enqueue("tasks.add",
(i, i[, pad])), each returning after the broker accepted it.

  py_producer.py BROKER RESULT QUEUE N PAYLOAD     -> "rate R"

The library comes from AIQUEUE_LIBRARY (bench/run.sh points it at its build).
"""
import sys
import time

from aiqueue import Client


def main(broker, result, queue, n, payload):
    pad = ("x" * payload,) if payload else ()
    with Client({"broker.url": broker, "result.url": result}, notify=False) as c:
        warm = min(200, n // 10 + 1)
        for i in range(warm):
            c.enqueue("tasks.add", (i, i) + pad, queue=queue + ".warm")
        t0 = time.monotonic()
        for i in range(n):
            c.enqueue("tasks.add", (i, i) + pad, queue=queue)
        dt = time.monotonic() - t0
    print(f"rate {n / dt:.1f}\nsecs {dt:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
