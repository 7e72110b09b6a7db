"""aiqueue-server's dashboard routes over real HTTP on loopback: the page and
its headers, the snapshot (/dashboard/state), the Server-Sent Events stream,
dead letters with requeue and delete, and the token on all of them.

usage: test_dashboard.py AIQUEUE_SERVER_EXE
"""
import html.parser
import json
import os
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_util import Server  # noqa: E402

SERVER = None
TOKEN = "dash-s3cret-token"
AUTH = {"Authorization": "Bearer " + TOKEN}
DEMO = "aiqueue.demo.progress"


class PageParser(html.parser.HTMLParser):
    """Collects what a strict Content-Security-Policy would refuse."""

    def __init__(self):
        super().__init__()
        self.inline = []
        self.scripts = []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in a:
            if k.startswith("on") or k == "style":
                self.inline.append("%s %s" % (tag, k))
        if tag == "style":
            self.inline.append("style element")
        if tag == "script":
            self.in_script = True
            self.scripts.append(a.get("src"))

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if self.in_script and data.strip():
            self.inline.append("inline script")


def read_events(port, path, seconds, accept=True):
    """Raw socket: the status line, the headers and the SSE events read
    within @seconds (the stream never ends on its own)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=seconds)
    req = "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (
        path, "Accept: text/event-stream\r\n" if accept else "Connection: close\r\n")
    s.sendall(req.encode())
    data = b""
    deadline = time.monotonic() + seconds
    ended = False
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                ended = True
                break
            data += chunk
            if data.endswith(b"0\r\n\r\n") and not accept:
                ended = True
                break
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    events = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    return head.decode(errors="replace"), events, ended


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(SERVER, "--workers", "2", "--threads", "1", "--log-level", "debug",
                         extra_env={"AIQUEUE_API_TOKEN": TOKEN})

    @classmethod
    def tearDownClass(cls):
        rc, err = cls.srv.stop()
        # The token never reaches the log, though the stream took it in the URL.
        if TOKEN in err:
            raise AssertionError("the token appears in the server's log")
        if rc != 0:
            raise AssertionError("server exited %d: %s" % (rc, err))

    def state(self):
        st, doc = self.srv.json("GET", "/dashboard/state", None, AUTH)
        self.assertEqual(st, 200, doc)
        return doc

    def wait_task(self, task_id, pred, timeout=15):
        """Poll the snapshot until the task's entry satisfies pred; returns
        every state seen on the way."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t in self.state()["tasks"]:
                if t["task_id"] == task_id:
                    if not seen or seen[-1] != t["state"]:
                        seen.append(t["state"])
                    if pred(t):
                        return t, seen
            time.sleep(0.1)
        self.fail("task %s never matched; states seen %s" % (task_id, seen))

    def enqueue(self, task, args):
        st, doc = self.srv.json("POST", "/tasks", {"task": task, "args": args}, AUTH)
        self.assertEqual(st, 202, doc)
        return doc["task_id"]

    def test_page_headers_and_no_inline_code(self):
        for path, ctype in (("/dashboard", "text/html"), ("/dashboard/app.js", "text/javascript"),
                            ("/dashboard/app.css", "text/css")):
            st, hdrs, body = self.srv.request("GET", path)  # no token: the page holds no data
            self.assertEqual(st, 200, path)
            self.assertTrue(hdrs["content-type"].startswith(ctype), hdrs)
            self.assertEqual(hdrs["x-content-type-options"], "nosniff")
            csp = hdrs["content-security-policy"]
            self.assertIn("default-src 'none'", csp)
            self.assertIn("script-src 'self'", csp)
            self.assertNotIn("unsafe-inline", csp)
            self.assertGreater(len(body), 100)
            st, hdrs, body = self.srv.request("HEAD", path)
            self.assertEqual((st, body), (200, b""))
        p = PageParser()
        p.feed(self.srv.request("GET", "/dashboard")[2].decode())
        self.assertEqual(p.inline, [])
        self.assertEqual(p.scripts, ["/dashboard/app.js"])
        # The script never puts data into the page as markup.
        js = self.srv.request("GET", "/dashboard/app.js")[2].decode()
        for bad in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            self.assertNotIn(bad, js)
        # JSON replies are nosniff too.
        self.assertEqual(self.srv.request("GET", "/healthz")[1]["x-content-type-options"],
                         "nosniff")

    def test_token_required_for_data(self):
        for method, path, body in (("GET", "/dashboard/state", None),
                                   ("GET", "/dashboard/stream", None),
                                   ("GET", "/dead-letters", None),
                                   ("DELETE", "/dead-letters/x", None),
                                   ("POST", "/dead-letters/x/requeue", {})):
            for h in ({}, {"Authorization": "Bearer nope"}):
                st, _, _ = self.srv.request(method, path, body, h)
                self.assertEqual(st, 401, (method, path, h))
        # ?access_token= is taken by the stream only, and must be right.
        self.assertEqual(self.srv.request("GET", "/dashboard/state?access_token=" + TOKEN)[0],
                         401)
        self.assertEqual(self.srv.request("GET", "/dashboard/stream?access_token=nope")[0], 401)
        st, hdrs, body = self.srv.request("GET", "/dashboard/stream?access_token=" + TOKEN)
        self.assertEqual(st, 200)
        self.assertTrue(hdrs["content-type"].startswith("text/event-stream"))
        self.assertTrue(body.startswith(b"retry: 2000\nevent: snapshot\ndata: {"), body[:80])

    def test_progress_then_success_in_the_snapshot(self):
        tid = self.enqueue(DEMO, [4, 250])
        t, seen = self.wait_task(tid, lambda t: t["state"] == "PROGRESS")
        self.assertEqual(t["name"], DEMO)
        self.assertEqual(set(t["result"]), {"current", "total"})
        self.assertEqual(t["result"]["total"], 4)
        t, seen2 = self.wait_task(tid, lambda t: t["state"] == "SUCCESS")
        self.assertEqual(t["result"], {"steps": 4})
        self.assertTrue(t["final"])
        self.assertGreaterEqual(t["runtime_ms"], 900)
        self.assertLess(t["runtime_ms"], 10000)
        self.assertNotIn("FAILURE", seen + seen2)
        s = self.state()
        self.assertGreaterEqual(sum(s["throughput"]), 1)
        self.assertEqual(len(s["throughput"]), 60)
        self.assertEqual([w["name"] for w in s["workers"]], ["embedded"])
        self.assertEqual(s["workers"][0]["status"], "online")
        self.assertEqual({q["kind"] for q in s["queues"]}, {"queue", "dead"})

    def test_demo_task_refuses_bad_args(self):
        tid = self.enqueue(DEMO, ["x"])
        t, _ = self.wait_task(tid, lambda t: t["final"])
        self.assertEqual(t["state"], "FAILURE")
        self.assertIn("ValueError", t["error"])

    def test_revoke_shows_revoked(self):
        tid = self.enqueue(DEMO, [50, 200])
        self.wait_task(tid, lambda t: t["state"] in ("STARTED", "PROGRESS"))
        st, doc = self.srv.json("DELETE", "/tasks/" + tid, None, AUTH)
        self.assertEqual(st, 200, doc)
        t, _ = self.wait_task(tid, lambda t: t["final"])
        self.assertEqual(t["state"], "REVOKED")

    def test_dead_letter_requeue_and_delete(self):
        bad = self.enqueue("dash.no_such_task", [2, 50])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st, doc = self.srv.json("GET", "/dead-letters", None, AUTH)
            self.assertEqual(st, 200)
            mine = [d for d in doc["dead_letters"] if d["task_id"] == bad]
            if mine:
                break
            time.sleep(0.1)
        self.assertEqual(len(mine), 1, doc)
        self.assertEqual(mine[0]["name"], "dash.no_such_task")
        self.assertIn("unregistered task", mine[0]["reason"])
        self.assertTrue(mine[0]["requeueable"])
        self.assertIn(bad, [d["task_id"] for d in self.state()["dead_letters"]])
        # Bad bodies are refused and change nothing.
        for body in ([], {"task": ""}, {"task": 3}, {"other": 1}):
            st, _, _ = self.srv.request("POST", "/dead-letters/%s/requeue" % bad, body, AUTH)
            self.assertEqual(st, 422, body)
        st, _, _ = self.srv.request("POST", "/dead-letters/%s/requeue" % bad, b"{",
                                    dict(AUTH, **{"Content-Type": "application/json"}))
        self.assertEqual(st, 400)
        # Requeued under the right name: a new task that runs to SUCCESS.
        st, doc = self.srv.json("POST", "/dead-letters/%s/requeue" % bad, {"task": DEMO}, AUTH)
        self.assertEqual(st, 202, doc)
        self.assertEqual(doc["requeued_from"], bad)
        self.assertNotEqual(doc["task_id"], bad)
        t, _ = self.wait_task(doc["task_id"], lambda t: t["final"])
        self.assertEqual((t["state"], t["result"]), ("SUCCESS", {"steps": 2}))
        self.assertNotIn(bad, [d["task_id"] for d in self.srv.json(
            "GET", "/dead-letters", None, AUTH)[1]["dead_letters"]])
        # Not a dead letter (any more): 409.
        st, doc = self.srv.json("POST", "/dead-letters/%s/requeue" % bad, {}, AUTH)
        self.assertEqual(st, 409, doc)
        # Delete: another dead letter goes off the list; deleting again is a no-op.
        bad2 = self.enqueue("dash.no_such_task", [])
        deadline = time.monotonic() + 10
        while bad2 not in [d["task_id"] for d in self.state()["dead_letters"]]:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)
        self.assertEqual(self.srv.json("DELETE", "/dead-letters/" + bad2, None, AUTH)[1],
                         {"task_id": bad2, "deleted": True})
        self.assertNotIn(bad2, [d["task_id"] for d in self.state()["dead_letters"]])
        self.assertEqual(self.srv.json("DELETE", "/dead-letters/" + bad2, None, AUTH)[1],
                         {"task_id": bad2, "deleted": False})

    def test_stream_pushes_snapshots(self):
        head, events, ended = read_events(self.srv.port,
                                          "/dashboard/stream?access_token=" + TOKEN, 1.8)
        self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        self.assertIn("text/event-stream", head)
        self.assertFalse(ended, "the stream ended on its own")
        self.assertGreaterEqual(len(events), 2, events)
        self.assertLess(events[0]["time_ms"], events[-1]["time_ms"])
        for e in events:
            self.assertEqual(set(e), {"time_ms", "workers", "queues", "tasks", "dead_letters",
                                      "throughput", "finished"})
        # Without Accept: text/event-stream, one event and the end.
        head, events, ended = read_events(self.srv.port,
                                          "/dashboard/stream?access_token=" + TOKEN, 5,
                                          accept=False)
        self.assertTrue(ended)
        self.assertEqual(len(events), 1)


class IdleStateTest(unittest.TestCase):
    def test_first_state_after_idle_is_fresh(self):
        # With no page open the ticker reads nothing; the first GET
        # /dashboard/state reads the store itself rather than answer with
        # the snapshot of before (regression: it showed PENDING).
        srv = Server(SERVER, "--workers", "1", "--log-level", "error")
        try:
            st, doc = srv.json("POST", "/tasks", {"task": DEMO, "args": [1, 50]})
            self.assertEqual(st, 202, doc)
            st, first = srv.json("GET", "/tasks/%s?wait=10" % doc["task_id"])
            self.assertEqual(first["state"], "SUCCESS", first)
            st, snap = srv.json("GET", "/dashboard/state")
            self.assertEqual(st, 200)
            mine = [t for t in snap["tasks"] if t["task_id"] == doc["task_id"]]
            self.assertEqual([(t["state"], t["result"]) for t in mine],
                             [("SUCCESS", {"steps": 1})])
        finally:
            rc, err = srv.stop()
            self.assertEqual(rc, 0, err)


class StreamShutdownTest(unittest.TestCase):
    def test_sigterm_ends_open_streams(self):
        srv = Server(SERVER, "--log-level", "error")
        socks = []
        try:
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                s.sendall(b"GET /dashboard/stream HTTP/1.1\r\nHost: x\r\n"
                          b"Accept: text/event-stream\r\n\r\n")
                self.assertIn(b"200 OK", s.recv(4096))
                socks.append(s)
            t0 = time.monotonic()
            rc, err = srv.stop(signal.SIGTERM, timeout=10)
            self.assertEqual(rc, 0, err)
            self.assertLess(time.monotonic() - t0, 5)
            for s in socks:
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.assertTrue(data.endswith(b"0\r\n\r\n") or data == b"", data[-40:])
        finally:
            for s in socks:
                s.close()
            srv.kill()


if __name__ == "__main__":
    SERVER = sys.argv[1]
    unittest.main(argv=sys.argv[:1], verbosity=2)
