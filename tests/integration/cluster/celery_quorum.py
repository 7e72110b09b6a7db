"""Celery 5.2 on quorum queues that libaiqueue declared.

    celery_quorum.py BROKER_URL QUEUE LIMITED_QUEUE LIMIT

QUEUE was declared by libaiqueue with amqp.queue_type=quorum; LIMITED_QUEUE
with amqp.delivery_limit=LIMIT as well. A real Celery worker declares QUEUE
the way the docs tell Celery users to (task_queues with x-queue-type) and runs
a task sent by a Celery client; kombu declares LIMITED_QUEUE with the
documented arguments (accepted) and with x-queue-type alone (refused: 406).
Exit status 0 when all of that holds; one line of figures on stdout.
"""
import os
import subprocess
import sys
import time

import kombu.transport.pyamqp
from celery import Celery
from kombu import Connection, Exchange, Queue

# Celery 5.2 sets a global basic.qos on RabbitMQ >= 3.3 (it asks the
# transport whether RabbitMQ's per-consumer QoS "matches the spec"), and
# RabbitMQ refuses to consume a quorum queue on such a channel (540
# NOT_IMPLEMENTED - queue ... does not support global qos). Saying "yes"
# makes the worker use per-consumer QoS: the workaround docs/scaling.md gives.
kombu.transport.pyamqp.Transport.qos_semantics_matches_spec = lambda self, connection: True

# The worker imports this module under its own command line: it gets the
# arguments from the environment.
_args = os.environ["AIQ_CQ_ARGS"].split("\x1f") if "AIQ_CQ_ARGS" in os.environ else sys.argv[1:]
url, queue, limited, limit = _args[0], _args[1], _args[2], int(_args[3])

app = Celery("celery_quorum", broker=url, backend="rpc://")
app.conf.update(
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
    task_queues=[Queue(queue, Exchange(queue), routing_key=queue,
                       queue_arguments={"x-queue-type": "quorum"})],
    task_default_queue=queue,
    broker_connection_retry_on_startup=True,
)


@app.task(name="cluster.add")
def add(a, b):
    return a + b


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=here, AIQ_CQ_ARGS="\x1f".join(sys.argv[1:]))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_quorum", "worker", "-P", "solo",
         "-Q", queue, "--without-mingle", "--without-gossip", "--without-heartbeat",
         "-l", "WARNING"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        r = add.apply_async((1, 2), queue=queue)
        value = r.get(timeout=30)
        took = time.monotonic() - t0
    except Exception as e:  # the worker's log says why
        worker.terminate()
        out, _ = worker.communicate(timeout=20)
        print("celery worker failed on quorum queue %s: %r\n%s" % (queue, e, out[-3000:]))
        return 1
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
    if value != 3:
        print("unexpected result %r" % (value,))
        return 1
    same = {"x-queue-type": "quorum", "x-delivery-limit": limit,
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": limited + ".dead"}
    with Connection(url) as conn:
        Queue(limited, Exchange(limited), routing_key=limited,
              queue_arguments=same)(conn.default_channel).declare()
        refused = False
        try:
            Queue(limited, Exchange(limited), routing_key=limited,
                  queue_arguments={"x-queue-type": "quorum"})(conn.channel()).declare()
        except Exception as e:  # amqp.exceptions.PreconditionFailed
            refused = "PRECONDITION_FAILED" in str(e) or "inequivalent" in str(e)
    if not refused:
        print("a declaration without x-delivery-limit was accepted on %s" % limited)
        return 1
    print("celery 5.2 worker ran a task from quorum queue %s in %.1f s; %s accepted with "
          "the same arguments, refused without x-delivery-limit" % (queue, took, limited))
    return 0


if __name__ == "__main__" and "AIQ_CQ_ARGS" not in os.environ:
    sys.exit(main())
