"""The Python binding's canvas (aiqueue.canvas) against real Celery workers,
run by test_canvas.py in a process of its own (a sanitized libaiqueue needs
the sanitizer runtime preloaded, which Celery's processes should not get).

    binding_canvas.py REDIS_PORT   prints {"chain", "chord", "group", "group_ids",
                                           "restored_ids"} as JSON
"""
import json
import sys

import aiqueue
from aiqueue import canvas


def main(port):
    a = aiqueue.App("canvas-py", broker=f"redis://127.0.0.1:{port}/0",
                    backend=f"redis://127.0.0.1:{port}/1")
    try:
        def sig(name, *args, queue):
            return canvas.signature(name, args, queue=queue, app=a)

        out = {}
        r = canvas.chain(sig("tasks.c_add", 1, 2, queue="c"),
                         sig("tasks.py_add", 3, queue="py"),
                         sig("tasks.c_add", 4, queue="c")).apply_async()
        out["chain"] = r.get(timeout=30)
        header = [sig("tasks.add", i, i, queue="c" if i % 2 else "py") for i in range(20)]
        body = sig("tasks.py_tsum", "py-binding", queue="py")
        out["chord"] = canvas.chord(header)(body).get(timeout=60)
        g = canvas.group(sig("tasks.add", i, 1, queue="c" if i % 2 else "py")
                         for i in range(4)).apply_async().save()
        out["group"] = g.get(timeout=30)
        out["group_id"] = g.id
        out["group_ids"] = [x.id for x in g.results]
        out["restored_ids"] = [x.id for x in canvas.GroupResult.restore(g.id, app=a).results]
        print(json.dumps(out))
    finally:
        a.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
