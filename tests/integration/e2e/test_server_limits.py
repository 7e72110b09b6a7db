"""aiqueue-server under abuse: connection floods, slow headers, many long
polls, a broker that hangs, and secrets planted in URLs.

usage: test_server_limits.py AIQUEUE_SERVER_EXE
"""
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_util import Server, closed_port, env  # noqa: E402

SERVER = None


def metrics(srv, source="127.0.0.2"):
    status, body = get_from(srv, "/metrics", source)
    assert status == 200, (status, body)
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def get_from(srv, path, source="127.0.0.2", timeout=5):
    """GET over a connection from another loopback address (its own per-IP
    quota): (status, body). Raises on no answer within the timeout."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.bind((source, 0))
        s.connect(("127.0.0.1", srv.port))
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = s.recv(65536)
            if not b:
                break
            data += b
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def read_responses(socks, want, timeout):
    """Read from many sockets until @want of them answered (or the timeout):
    {socket: bytes}."""
    got = {}
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        pending = [s for s in socks if s not in got]
        r, _, _ = select.select(pending, [], [], 0.2)
        for s in r:
            try:
                got[s] = s.recv(65536)
            except OSError:
                got[s] = b""
    return got


class ConnectionLimitsTest(unittest.TestCase):
    def test_floods_from_one_address_leave_probes_up(self):
        srv = Server(SERVER, "--threads", "1", "--max-connections-per-ip", "40",
                     "--max-long-polls", "20", "--max-wait", "30", "--log-level", "error")
        socks = []
        try:
            # 30 long polls: 20 wait, the others are told to come back later.
            polls = []
            for i in range(30):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                s.sendall(b"GET /tasks/bogus-%d?wait=30 HTTP/1.1\r\nHost: t\r\n\r\n" % i)
                polls.append(s)
            socks += polls
            got = read_responses(polls, 10, 10)
            self.assertEqual(len(got), 10, got)
            for data in got.values():
                self.assertTrue(data.startswith(b"HTTP/1.1 503 "), data[:200])
                self.assertIn(b"\r\nRetry-After: ", data)
                self.assertIn(b"max-long-polls", data)
            for s in got:
                s.close()
                socks.remove(s)
            # No more answers: the 20 others wait.
            self.assertEqual(read_responses([s for s in polls if s not in got], 1, 0.5), {})
            m = metrics(srv)
            self.assertEqual(m["aiqueue_http_long_polls"], 20)
            self.assertEqual(m["aiqueue_http_long_polls_refused_total"], 10)

            # Slowloris from the same address: past 40 connections it is refused.
            refused = 0
            for i in range(60):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                socks.append(s)
                try:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
                except OSError:
                    refused += 1
            time.sleep(0.5)
            for s in socks[-60:]:
                r, _, _ = select.select([s], [], [], 0)
                if r:
                    try:
                        if s.recv(100) == b"":
                            refused += 1
                    except OSError:
                        refused += 1
            self.assertGreaterEqual(refused, 40, "per-address limit not applied")

            # Everyone else is still served, within a bound.
            self.assertEqual(get_from(srv, "/healthz")[0], 200)
            self.assertEqual(get_from(srv, "/metrics", "127.0.0.3")[0], 200)
        finally:
            for s in socks:
                s.close()
            rc, err = srv.stop()
        self.assertEqual(rc, 0, err)

    def test_global_connection_limit(self):
        # Past --max-connections the server accepts nothing more: a new
        # connection waits in the listen backlog until one closes.
        srv = Server(SERVER, "--threads", "1", "--max-connections", "20",
                     "--max-connections-per-ip", "1000", "--log-level", "error")
        held = []
        try:
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # headers unfinished
                held.append(s)
            time.sleep(0.3)
            late = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            held.append(late)
            late.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            r, _, _ = select.select([late], [], [], 1.0)
            self.assertEqual(r, [], "served past --max-connections")
            for s in held[:5]:
                s.close()
            r, _, _ = select.select([late], [], [], 5.0)
            self.assertEqual(r, [late])
            self.assertTrue(late.recv(100).startswith(b"HTTP/1.1 200 "))
        finally:
            for s in held:
                s.close()
            rc, err = srv.stop()
        self.assertEqual(rc, 0, err)

    def test_header_deadline_is_absolute(self):
        # MHD's own timeout is an idle one: a byte every half second resets it.
        srv = Server(SERVER, "--header-timeout", "2", "--idle-timeout", "30",
                     "--log-level", "error")
        try:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            closed = False
            t0 = time.monotonic()
            while not closed and time.monotonic() - t0 < 10:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                    r, _, _ = select.select([s], [], [], 0.5)
                    if r and s.recv(100) == b"":
                        closed = True
                except OSError:
                    closed = True
            s.close()
            self.assertTrue(closed, "a trickling request was kept past --header-timeout")
            self.assertGreaterEqual(metrics(srv)["aiqueue_http_header_timeouts_total"], 1)
            # A prompt request on a fresh connection is served.
            self.assertEqual(get_from(srv, "/healthz", "127.0.0.1")[0], 200)
        finally:
            rc, err = srv.stop()
        self.assertEqual(rc, 0, err)


class LongPollTest(unittest.TestCase):
    def test_pending_polls_do_not_delay_others(self):
        srv = Server(SERVER, "--workers", "1", "--max-wait", "30", "--log-level", "error")
        results = []
        threads = []
        try:
            for i in range(20):
                th = threading.Thread(target=lambda i=i: results.append(
                    srv.json("GET", "/tasks/bogus-%d?wait=30" % i, timeout=60)))
                th.start()
                threads.append(th)
            deadline = time.monotonic() + 10
            while metrics(srv)["aiqueue_http_long_polls"] < 20:
                self.assertLess(time.monotonic(), deadline, "long polls not waiting")
                time.sleep(0.1)
            status, doc = srv.json("POST", "/tasks", {
                "task": "tasks.analyze_track", "args": ["t", "la la la"],
                "options": {"countdown": 1}})
            self.assertEqual(status, 202, doc)
            t0 = time.monotonic()
            status, res = srv.json("GET", "/tasks/%s?wait=30" % doc["task_id"], timeout=60)
            elapsed = time.monotonic() - t0
            self.assertEqual(status, 200, res)
            self.assertEqual(res["state"], "SUCCESS", res)
            self.assertLess(elapsed, 10, "a poll waited behind the others")
        finally:
            # Stopping answers the pending polls at once with their state.
            rc, err = srv.stop()
            for th in threads:
                th.join(30)
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(results), 20)
        for status, doc in results:
            self.assertEqual((status, doc["state"]), (200, "PENDING"))


class Blackhole:
    """A TCP listener that accepts and never answers (a hung broker)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


HANG_ENV = {"AIQUEUE_REDIS_SOCKET_TIMEOUT_MS": "6000",
            "AIQUEUE_REDIS_CONNECT_TIMEOUT_MS": "6000"}


class BrokerHangsTest(unittest.TestCase):
    def setUp(self):
        self.bh = Blackhole()
        self.url = "redis://127.0.0.1:%d/0" % self.bh.port

    def tearDown(self):
        self.bh.close()

    def post_many(self, srv, n):
        out = []

        def one():
            t0 = time.monotonic()
            st, hdrs, _ = srv.request("POST", "/analyze", {"track_id": "a", "text": "b"},
                                      timeout=60)
            out.append((time.monotonic() - t0, st, hdrs))

        ths = [threading.Thread(target=one) for _ in range(n)]
        for t in ths:
            t.start()
        return ths, out

    def test_healthz_does_not_wait_on_the_broker(self):
        # Breaker off: every enqueue waits out the driver's timeout (6 s).
        srv = Server(SERVER, "--broker", self.url, "--threads", "1", "--breaker-cooldown", "0",
                     "--log-level", "error", extra_env=HANG_ENV, startup_timeout=40)
        try:
            ths, out = self.post_many(srv, 8)
            time.sleep(0.5)
            t0 = time.monotonic()
            self.assertEqual(srv.request("GET", "/healthz", timeout=5)[0], 200)
            self.assertEqual(srv.request("GET", "/metrics", timeout=5)[0], 200)
            self.assertLess(time.monotonic() - t0, 5)
            for t in ths:
                t.join(60)
            self.assertEqual(sorted(st for _, st, _ in out), [503] * 8)
        finally:
            rc, err = srv.stop()
        self.assertEqual(rc, 0, err)

    def test_fails_fast_while_the_broker_is_down(self):
        srv = Server(SERVER, "--broker", self.url, "--breaker-cooldown", "3",
                     "--log-level", "error", extra_env=HANG_ENV, startup_timeout=40)
        try:
            # The start-up probe failed: the breaker is open.
            t0 = time.monotonic()
            st, hdrs, body = srv.request("POST", "/analyze", {"track_id": "a", "text": "b"})
            self.assertLess(time.monotonic() - t0, 3)
            self.assertEqual(st, 503, body)
            self.assertGreaterEqual(int(hdrs["retry-after"]), 1)
            st, _, body = srv.request("GET", "/readyz", timeout=5)
            self.assertEqual(st, 503, body)
            m = metrics(srv)
            self.assertEqual(m["aiqueue_broker_circuit_open"], 1)
            # After the cool-down one request probes (and waits on the broker);
            # the others still fail fast.
            time.sleep(3.5)
            ths, out = self.post_many(srv, 4)
            for t in ths:
                t.join(60)
            times = sorted(t for t, _, _ in out)
            self.assertEqual([st for _, st, _ in out], [503] * 4)
            self.assertLess(times[2], 3, times)
            self.assertGreaterEqual(times[3], 4, times)
            self.assertGreaterEqual(metrics(srv)["aiqueue_broker_circuit_trips_total"], 2)
        finally:
            rc, err = srv.stop()
        self.assertEqual(rc, 0, err)


class SecretsTest(unittest.TestCase):
    def check_outputs(self, args, secrets):
        """Start the server on @args, exercise every route, and check that no
        output channel shows any of @secrets. Returns the server's stderr."""
        texts = []
        try:
            srv = Server(SERVER, *args, "--log-level", "debug")
        except RuntimeError:  # refused at start: its messages count too
            p = subprocess.run([SERVER, "--listen", "127.0.0.1:0", *args], env=env(),
                               capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn(b"cannot start", p.stderr)
            texts.append((p.stdout + p.stderr).decode(errors="replace"))
            srv = None
        if srv:
            try:
                tid = str(uuid.uuid4())
                for method, path, body in (
                        ("POST", "/analyze", {"track_id": "a", "text": "b"}),
                        ("POST", "/analyze/batch", {"items": [{"track_id": 1, "text": "b"}]}),
                        ("POST", "/tasks", {"task": "tasks.x"}),
                        ("GET", "/tasks/" + tid, None), ("GET", "/tasks/%s?wait=1" % tid, None),
                        ("DELETE", "/tasks/" + tid, None), ("GET", "/readyz", None),
                        ("GET", "/metrics", None)):
                    st, hdrs, data = srv.request(method, path, body)
                    texts.append(data.decode(errors="replace"))
                    texts.append(json.dumps(hdrs))
                st, _, data = srv.request("GET", "/readyz")
                self.assertEqual(st, 503)
                self.assertNotIn("://", data.decode())
            finally:
                rc, err = srv.stop()
            texts.append(err)
            self.assertEqual(rc, 0, err)
        for t in texts:
            for secret in secrets:
                self.assertNotIn(secret, t)
        return "\n".join(texts)

    def test_planted_secrets_are_never_shown(self):
        bport, sport = closed_port(), closed_port()
        for cooldown in ("0", "5"):  # error details from the driver, and fail-fast
            err = self.check_outputs(
                ["--broker", "redis://SECRET1xyz@127.0.0.1:%d/0" % bport,
                 "--backend", "redis://user:SECRET2xyz@127.0.0.1:%d/1" % sport,
                 "--breaker-cooldown", cooldown],
                ["SECRET1xyz", "SECRET2xyz"])
            # The URLs are shown, redacted.
            self.assertIn("127.0.0.1:%d" % bport, err)
            self.assertIn("127.0.0.1:%d" % sport, err)
        # A '#' in an unencoded password (whether or not the URL is accepted).
        self.check_outputs(
            ["--broker", "redis://user:pa#SECRET3xyz@127.0.0.1:%d/0" % bport],
            ["SECRET3xyz", "pa#SECRET3"])
        self.check_outputs(
            ["--backend", "redis://127.0.0.1:%d/1?password=SECRET4xyz" % sport],
            ["SECRET4xyz"])


if __name__ == "__main__":
    SERVER = sys.argv[1]
    del sys.argv[1:2]
    unittest.main(verbosity=2)
