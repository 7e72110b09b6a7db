"""aiqueue-server end to end over real HTTP on loopback, with embedded
workers on the memory:// default.

usage: test_server.py AIQUEUE_SERVER_EXE LYRICS_DIR DOCS_DIR
"""
import glob
import http.client
import json
import os
import re
import socket
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_util import Server, closed_port  # noqa: E402

SERVER = LYRICS = DOCS = None
JSON_CT = {"Content-Type": "application/json"}


def lyrics():
    files = sorted(glob.glob(os.path.join(LYRICS, "*.txt")))
    assert files, "no sample lyrics in " + LYRICS
    out = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            out.append((os.path.basename(f), fh.read()))
    return out


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # One HTTP thread: long polls must not hold it (they are suspended).
        cls.srv = Server(SERVER, "--workers", "2", "--threads", "1", "--max-body", "65536",
                         "--max-wait", "15", "--log-level", "warning")

    @classmethod
    def tearDownClass(cls):
        rc, err = cls.srv.stop()
        if rc != 0:
            raise AssertionError("server exited %d: %s" % (rc, err))

    def detail(self, status, body, want_status, *words):
        self.assertEqual(status, want_status, body)
        doc = json.loads(body)
        self.assertIsInstance(doc, dict)
        self.assertEqual(list(doc.keys())[0], "detail", doc)
        self.assertIsInstance(doc["detail"], str)
        for w in words:
            self.assertIn(w, doc["detail"])

    def wait_for(self, task_id, wait=10):
        status, doc = self.srv.json("GET", "/tasks/%s?wait=%s" % (task_id, wait),
                                    timeout=wait + 10)
        self.assertEqual(status, 200, doc)
        return doc

    # ---- the job ---------------------------------------------------------

    def test_analyze_lyrics_end_to_end(self):
        for name, text in lyrics():
            status, doc = self.srv.json("POST", "/analyze", {"track_id": name, "text": text})
            self.assertEqual(status, 202, doc)
            self.assertEqual(doc["status"], "queued")
            res = self.wait_for(doc["task_id"])
            self.assertEqual(res["state"], "SUCCESS", res)
            self.assertTrue(res["ready"])
            self.assertIsNone(res["error"])
            self.assertIsNotNone(res["date_done"])
            self.assertEqual(res["result"]["track_id"], name)
            self.assertEqual(res["result"]["analyzer"], "lyrics")
            a = res["result"]["analysis"]
            self.assertGreater(a["word_count"], 10)
            self.assertIn(a["language"], ("en", "ru"))
            self.assertEqual(a["language"], name[:2])

    def test_batch(self):
        items = [{"track_id": i, "text": t, "analyzer": "lyrics", "options": {"top_words": 3}}
                 for i, (_, t) in enumerate(lyrics())]
        status, doc = self.srv.json("POST", "/analyze/batch", {"items": items})
        self.assertEqual(status, 202, doc)
        self.assertEqual(doc["count"], len(items))
        self.assertEqual(len(set(doc["task_ids"])), len(items))
        for i, tid in enumerate(doc["task_ids"]):
            res = self.wait_for(tid)
            self.assertEqual(res["state"], "SUCCESS", res)
            self.assertEqual(res["result"]["track_id"], i)
            self.assertLessEqual(len(res["result"]["analysis"]["top_words"]), 3)

    def test_generic_task_with_options_and_long_poll(self):
        text = lyrics()[0][1]
        tid = str(uuid.uuid4())
        status, doc = self.srv.json("POST", "/tasks", {
            "task": "tasks.analyze_track", "args": ["t-generic", text],
            "kwargs": {"analyzer": "lyrics"},
            "options": {"countdown": 1.5, "expires": 600, "priority": 5, "max_retries": 1,
                        "task_id": tid}})
        self.assertEqual(status, 202, doc)
        self.assertEqual(doc["task_id"], tid)
        # Not done yet: a short wait times out with the non-final state.
        t0 = time.monotonic()
        status, early = self.srv.json("GET", "/tasks/%s?wait=0.3" % tid)
        self.assertEqual(status, 200)
        self.assertFalse(early["ready"], early)
        self.assertGreaterEqual(time.monotonic() - t0, 0.25)
        # While a long poll is pending, the single HTTP thread keeps serving.
        box = {}
        th = threading.Thread(target=lambda: box.update(doc=self.wait_for(tid, 10)))
        th.start()
        time.sleep(0.2)
        t1 = time.monotonic()
        status, _, _ = self.srv.request("GET", "/healthz")
        self.assertEqual(status, 200)
        self.assertLess(time.monotonic() - t1, 0.5)
        th.join(20)
        self.assertFalse(th.is_alive())
        self.assertEqual(box["doc"]["state"], "SUCCESS", box["doc"])
        self.assertGreaterEqual(time.monotonic() - t0, 1.4)

    def test_unique_task_returns_existing(self):
        body = {"task": "tasks.analyze_track", "args": ["u-" + uuid.uuid4().hex, "la"],
                "options": {"countdown": 30, "unique": True, "unique_ttl": 60,
                            "unique_scope": "running"}}
        status, first = self.srv.json("POST", "/tasks", body)
        self.assertEqual(status, 202, first)
        self.assertIs(first["existing"], False)
        status, second = self.srv.json("POST", "/tasks", body)
        self.assertEqual(status, 202, second)
        self.assertIs(second["existing"], True)
        self.assertEqual(second["task_id"], first["task_id"])
        status, plain = self.srv.json("POST", "/tasks", {"task": "tasks.nobody_has_this"})
        self.assertIs(plain["existing"], False)
        self.srv.json("DELETE", "/tasks/" + first["task_id"])

    def test_unknown_task_fails_with_error(self):
        status, doc = self.srv.json("POST", "/tasks", {"task": "tasks.nobody_has_this"})
        self.assertEqual(status, 202, doc)
        res = self.wait_for(doc["task_id"])
        self.assertEqual(res["state"], "FAILURE", res)
        self.assertEqual(res["error"]["type"], "NotRegistered")
        self.assertTrue(res["error"]["module"])

    def test_revoke(self):
        status, doc = self.srv.json("POST", "/tasks", {
            "task": "tasks.analyze_track", "args": ["r", "la la"],
            "options": {"countdown": 30}})
        self.assertEqual(status, 202, doc)
        status, rev = self.srv.json("DELETE", "/tasks/" + doc["task_id"])
        self.assertEqual(status, 200, rev)
        res = self.wait_for(doc["task_id"], 1)
        self.assertEqual(res["state"], "REVOKED", res)

    def test_revoke_finished_task_is_409(self):
        # A final state is never replaced: DELETE says so and names the state kept.
        status, doc = self.srv.json("POST", "/tasks", {
            "task": "tasks.analyze_track", "args": ["done", "la la la"]})
        self.assertEqual(status, 202, doc)
        tid = doc["task_id"]
        self.assertEqual(self.wait_for(tid)["state"], "SUCCESS")
        status, rev = self.srv.json("DELETE", "/tasks/" + tid)
        self.assertEqual(status, 409, rev)
        self.assertEqual(rev["state"], "SUCCESS", rev)
        self.assertEqual(rev["task_id"], tid)
        self.assertIn("SUCCESS", rev["detail"])
        self.assertEqual(self.srv.json("GET", "/tasks/" + tid)[1]["state"], "SUCCESS")
        # Revoked once, a second DELETE is a 409 naming REVOKED.
        status, doc = self.srv.json("POST", "/tasks", {
            "task": "tasks.analyze_track", "args": ["r2", "x"], "options": {"countdown": 30}})
        self.assertEqual(status, 202, doc)
        self.assertEqual(self.srv.json("DELETE", "/tasks/" + doc["task_id"])[0], 200)
        status, rev = self.srv.json("DELETE", "/tasks/" + doc["task_id"])
        self.assertEqual((status, rev["state"]), (409, "REVOKED"), rev)

    def raw(self, data, timeout=10):
        """Send raw bytes; return everything read until the server closes (or
        the timeout) and whether it closed."""
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=timeout)
        out, closed = b"", False
        try:
            for part in data if isinstance(data, list) else [data]:
                try:
                    s.sendall(part)
                except OSError:
                    break
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    b = s.recv(65536)
                except socket.timeout:
                    break
                except OSError:
                    closed = True
                    break
                if not b:
                    closed = True
                    break
                out += b
        finally:
            s.close()
        return out, closed

    def test_chunked_body_over_limit_gets_413(self):
        head = (b"POST /analyze HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
        out, closed = self.raw([head] + [chunk] * 40 + [b"0\r\n\r\n"])
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out[:200])
        self.assertIn(b"65536", out)
        self.assertTrue(closed)

    def test_content_length_with_transfer_encoding_is_400_and_closed(self):
        # RFC 9112 6.3: both framing headers is a smuggling vector. The second,
        # pipelined request must not be served on that connection.
        req = (b"POST /analyze HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
               b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        out, closed = self.raw(req)
        self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out[:200])
        self.assertIn(b"Transfer-Encoding", out)
        self.assertEqual(out.count(b"HTTP/1.1 "), 1, out)
        self.assertTrue(closed)

    def test_encoded_nul_in_path_is_refused(self):
        for target in (b"/tasks/abc%00def", b"/healthz%00", b"/tasks/x?wait=1%00"):
            out, _ = self.raw(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n"
                              b"Connection: close\r\n\r\n")
            self.assertTrue(out.startswith(b"HTTP/1.1 400 "), (target, out[:200]))
            self.assertIn(b"NUL", out)

    def test_latency_is_measured_below_a_millisecond(self):
        for _ in range(20):
            self.srv.request("GET", "/openapi.json")
        _, _, data = self.srv.request("GET", "/metrics")
        m = parse_prometheus(self, data.decode())
        total = m['aiqueue_http_request_duration_seconds_sum{route="/openapi.json"}']
        # Whole milliseconds would make the sum a multiple of 0.001 s.
        self.assertGreater(total, 0)
        self.assertGreater(abs(total * 1000 - round(total * 1000)), 1e-6, total)
        self.assertIn('aiqueue_http_request_duration_seconds_bucket{route="/openapi.json",'
                      'le="0.0001"}', m)

    def test_unknown_id_is_pending(self):
        status, doc = self.srv.json("GET", "/tasks/" + str(uuid.uuid4()))
        self.assertEqual(status, 200)
        self.assertEqual(doc["state"], "PENDING")
        self.assertIsNone(doc["date_done"])

    # ---- errors ----------------------------------------------------------

    def test_bad_requests(self):
        big = json.dumps({"track_id": "x", "text": "a" * 70000}).encode()
        valid = {"track_id": "x", "text": "la"}
        cases = [
            # method, path, body (bytes or obj), headers, status, words in detail
            ("POST", "/analyze", b"{bad", JSON_CT, 400, "malformed JSON"),
            ("POST", "/analyze", b"", JSON_CT, 400, "malformed JSON"),
            ("POST", "/analyze", b'{"track_id": "x", "text": "\xff\xfe"}', JSON_CT, 400, ""),
            ("POST", "/analyze", b"[1, 2]", JSON_CT, 422, "object"),
            ("POST", "/analyze", b"null", JSON_CT, 422, "object"),
            ("POST", "/analyze", b'{"text": "x"}', JSON_CT, 422, "track_id"),
            ("POST", "/analyze", b'{"track_id": "x"}', JSON_CT, 422, "text"),
            ("POST", "/analyze", b'{"track_id": [1], "text": "x"}', JSON_CT, 422, "track_id"),
            ("POST", "/analyze", b'{"track_id": 1.5, "text": "x"}', JSON_CT, 422, "track_id"),
            ("POST", "/analyze", b'{"track_id": "x", "text": 5}', JSON_CT, 422, "text"),
            ("POST", "/analyze", b'{"track_id": "x", "text": "t", "analyzer": 3}', JSON_CT,
             422, "analyzer"),
            ("POST", "/analyze", b'{"track_id": "x", "text": "t", "options": []}', JSON_CT,
             422, "options"),
            ("POST", "/analyze", b'{"track_id": "x", "text": "t", "colour": 1}', JSON_CT,
             422, "colour"),
            ("POST", "/analyze", json.dumps(valid).encode(), {"Content-Type": "text/plain"},
             415, "application/json"),
            ("POST", "/analyze", json.dumps(valid).encode(), {}, 415, "application/json"),
            ("POST", "/analyze", big, JSON_CT, 413, "65536"),
            ("POST", "/analyze/batch", b'{}', JSON_CT, 422, "items"),
            ("POST", "/analyze/batch", b'{"items": {}}', JSON_CT, 422, "items"),
            ("POST", "/analyze/batch", b'{"items": []}', JSON_CT, 422, "items"),
            ("POST", "/analyze/batch",
             b'{"items": [{"track_id": 1, "text": "a"}, {"track_id": 2, "text": null}]}',
             JSON_CT, 422, "items[1].text"),
            ("POST", "/tasks", b'{}', JSON_CT, 422, "task"),
            ("POST", "/tasks", b'{"task": 7}', JSON_CT, 422, "task"),
            ("POST", "/tasks", b'{"task": "t", "args": {}}', JSON_CT, 422, "args"),
            ("POST", "/tasks", b'{"task": "t", "kwargs": []}', JSON_CT, 422, "kwargs"),
            ("POST", "/tasks", b'{"task": "t", "options": {"countdown": "soon"}}', JSON_CT,
             422, "options.countdown"),
            ("POST", "/tasks", b'{"task": "t", "options": {"priority": 256}}', JSON_CT, 422,
             "options.priority"),
            ("POST", "/tasks", b'{"task": "t", "options": {"eta": "tomorrow"}}', JSON_CT, 422,
             "options.eta"),
            ("POST", "/tasks", b'{"task": "t", "options": {"task_id": ""}}', JSON_CT, 422,
             "options.task_id"),
            ("POST", "/tasks", b'{"task": "t", "options": {"unique": 5}}', JSON_CT, 422,
             "unique"),
            ("POST", "/tasks", b'{"task": "t", "options": {"unique": true, '
             b'"unique_scope": "ever"}}', JSON_CT, 422, "unique_scope"),
            ("POST", "/tasks", b'{"task": "t", "options": {"unique": true, "unique_ttl": 0}}',
             JSON_CT, 422, "unique_ttl"),
            ("POST", "/tasks", b'{"task": "t", "options": {"bogus": 1}}', JSON_CT, 422,
             "options.bogus"),
            ("GET", "/tasks/abc?wait=soon", None, {}, 422, "wait"),
            ("GET", "/tasks/abc?wait=-1", None, {}, 422, "wait"),
            ("GET", "/nope", None, {}, 404, "Not Found"),
            ("GET", "/tasks", None, {}, 405, ""),
            ("GET", "/tasks/", None, {}, 404, ""),
            ("GET", "/tasks/a/b", None, {}, 404, ""),
            ("PUT", "/analyze", b"{}", JSON_CT, 405, ""),
            ("GET", "/analyze", None, {}, 405, ""),
            ("POST", "/healthz", b"{}", JSON_CT, 405, ""),
            ("PATCH", "/tasks/abc", b"{}", JSON_CT, 405, ""),
        ]
        for method, path, body, headers, want, word in cases:
            with self.subTest(method=method, path=path, body=body[:60] if body else None):
                status, hdrs, data = self.srv.request(method, path, body, headers)
                self.detail(status, data, want, word)
                self.assertTrue(hdrs["content-type"].startswith("application/json"))
                if want == 405:
                    self.assertIn("allow", hdrs)
        # Still up and serving.
        self.assertEqual(self.srv.request("GET", "/healthz")[0], 200)

    def test_body_limit_while_reading(self):
        # Chunked upload: no Content-Length to refuse early, so the limit holds while reading.
        c = self.srv.conn()
        try:
            def chunks():
                for _ in range(40):
                    yield b"x" * 4096
            c.request("POST", "/analyze", body=chunks(), encode_chunked=True,
                      headers={"Content-Type": "application/json", "Connection": "close"})
            r = c.getresponse()
            self.detail(r.status, r.read(), 413, "limit")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before the client finished sending
        finally:
            c.close()
        self.assertEqual(self.srv.request("GET", "/healthz")[0], 200)

    def test_oversized_headers_refused(self):
        # The headers of a request must fit the 64 KiB connection memory
        # (MHD_OPTION_CONNECTION_MEMORY_LIMIT, docs/security.md): ~100 KiB of
        # them get an error or a closed connection, never a 200.
        pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 40) for i in range(2000))
        out, closed = self.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n")
        status = out.split(b" ", 2)[1] if out.startswith(b"HTTP/1.") else b""
        self.assertNotEqual(status, b"200", out[:200])
        self.assertTrue(closed or status in (b"400", b"413", b"414", b"431"), out[:200])
        # A few KiB of headers are fine.
        pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 40) for i in range(100))
        out, _ = self.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + pad
                          + b"\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:200])

    def test_garbage_on_the_socket(self):
        for junk in (b"\x00\x01\x02 garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                     b"POST /analyze HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                     b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
            s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=5)
            try:
                s.sendall(junk)
                s.recv(4096)
            except OSError:
                pass
            finally:
                s.close()
        self.assertEqual(self.srv.request("GET", "/healthz")[0], 200)

    # ---- HTTP behaviour --------------------------------------------------

    def test_keep_alive(self):
        c = self.srv.conn()
        try:
            first_sock = None
            for i in range(5):
                c.request("POST", "/analyze", body=json.dumps({"track_id": i, "text": "la"}),
                          headers=JSON_CT)
                r = c.getresponse()
                self.assertEqual(r.status, 202)
                r.read()
                self.assertFalse(r.will_close)
                if first_sock is None:
                    first_sock = c.sock
                self.assertIs(c.sock, first_sock)
            # An error reply with a fully read body keeps the connection too.
            c.request("POST", "/analyze", body=b"{", headers=JSON_CT)
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 400)
            c.request("GET", "/healthz")
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            self.assertIs(c.sock, first_sock)
        finally:
            c.close()

    def test_health_and_readiness(self):
        self.assertEqual(self.srv.json("GET", "/healthz"), (200, {"status": "ok"}))
        self.assertEqual(self.srv.json("GET", "/readyz"), (200, {"status": "ready"}))
        self.assertEqual(self.srv.request("HEAD", "/healthz")[0], 200)

    def test_metrics(self):
        def scrape():
            status, hdrs, data = self.srv.request("GET", "/metrics")
            self.assertEqual(status, 200)
            self.assertTrue(hdrs["content-type"].startswith("text/plain"))
            return parse_prometheus(self, data.decode())

        before = scrape()
        self.srv.request("GET", "/healthz")
        self.srv.request("GET", "/nope")
        self.srv.json("POST", "/tasks", {"task": "tasks.metrics_probe"})
        after = scrape()
        key = 'aiqueue_http_requests_total{route="/healthz",status="200"}'
        self.assertEqual(after[key], before.get(key, 0) + 1)
        key = 'aiqueue_http_requests_total{route="other",status="404"}'
        self.assertEqual(after[key], before.get(key, 0) + 1)
        key = 'aiqueue_tasks_enqueued_total{task="tasks.metrics_probe"}'
        self.assertEqual(after[key], before.get(key, 0) + 1)
        self.assertIn('aiqueue_http_request_duration_seconds_bucket{route="/healthz",le="+Inf"}',
                      after)
        self.assertIn('aiqueue_http_request_duration_seconds_count{route="/healthz"}', after)
        self.assertIn("aiqueue_worker_tasks_succeeded_total", after)
        # Histogram buckets are cumulative.
        les = [(k, v) for k, v in after.items()
               if k.startswith('aiqueue_http_request_duration_seconds_bucket{route="/healthz"')]
        vals = [v for _, v in les]
        self.assertEqual(vals, sorted(vals))

    def test_openapi_matches_routes(self):
        status, doc = self.srv.json("GET", "/openapi.json")
        self.assertEqual(status, 200)
        self.assertTrue(doc["openapi"].startswith("3."))
        methods_in_doc = {}
        for path, item in doc["paths"].items():
            ms = {m.upper() for m in item if m in ("get", "post", "delete", "head", "put",
                                                    "patch")}
            self.assertTrue(ms, path)
            methods_in_doc[path] = ms
            concrete = path.replace("{task_id}", str(uuid.uuid4()))
            for m in ms:
                body = {} if m == "POST" else None
                st, _, _ = self.srv.request(m, concrete, body)
                with self.subTest(path=path, method=m):
                    self.assertNotIn(st, (404, 405), (m, path, st))
            # Every method the server serves on this path is documented.
            st, hdrs, _ = self.srv.request("PATCH", concrete, b"{}", JSON_CT)
            self.assertEqual(st, 405)
            served = {x.strip() for x in hdrs["allow"].split(",")}
            self.assertEqual(served, ms, path)
        # Paths outside the document are not served.
        for p in ("/", "/analyze/", "/analyze/batch/x", "/tasks/a/b", "/metrics/x", "/docs"):
            self.assertEqual(self.srv.request("GET", p)[0], 404, p)
        # docs/server.md lists the same routes.
        with open(os.path.join(DOCS, "server.md"), encoding="utf-8") as f:
            md = f.read()
        documented = {}
        for m, p in re.findall(r"^\|\s*`(GET|POST|DELETE|HEAD)`\s*\|\s*`([^`]+)`", md, re.M):
            documented.setdefault(p, set()).add(m)
        self.assertEqual(documented, methods_in_doc)


def parse_prometheus(test, text):
    """Parse the text exposition format strictly enough to catch mistakes."""
    samples = {}
    typed = {}
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|'
                         r'\\.)*",?)*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')
    test.assertTrue(text.endswith("\n"))
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            test.assertIn(kind, ("counter", "gauge", "histogram", "summary", "untyped"))
            test.assertNotIn(name, typed, "TYPE twice for " + name)
            typed[name] = kind
            continue
        if line.startswith("# HELP ") or not line:
            continue
        m = line_re.match(line)
        test.assertIsNotNone(m, "bad metrics line: %r" % line)
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        test.assertTrue(m.group(1) in typed or base in typed, "no TYPE for " + line)
        key = m.group(1) + (m.group(2) or "")
        test.assertNotIn(key, samples, "duplicate sample " + key)
        samples[key] = float(m.group(3))
    return samples


class AuthTest(unittest.TestCase):
    TOKEN = "s3cret-token-value"

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(SERVER, "--log-level", "error",
                         extra_env={"AIQUEUE_API_TOKEN": cls.TOKEN})

    @classmethod
    def tearDownClass(cls):
        rc, err = cls.srv.stop()
        if rc != 0:
            raise AssertionError("server exited %d: %s" % (rc, err))

    def test_token(self):
        body = {"track_id": "a", "text": "b"}
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": "Bearer " + self.TOKEN + "x"},
                        {"Authorization": "Bearer " + self.TOKEN[:-1]},
                        {"Authorization": "Basic " + self.TOKEN},
                        {"Authorization": self.TOKEN}):
            for method, path, b in (("POST", "/analyze", body), ("GET", "/tasks/x", None),
                                    ("DELETE", "/tasks/x", None)):
                st, hdrs, data = self.srv.request(method, path, b, headers)
                with self.subTest(headers=headers, path=path):
                    self.assertEqual(st, 401, data)
                    self.assertIn("detail", json.loads(data))
                    self.assertEqual(hdrs.get("www-authenticate"), "Bearer")
        ok = {"Authorization": "Bearer " + self.TOKEN}
        st, doc = self.srv.json("POST", "/analyze", body, ok)
        self.assertEqual(st, 202, doc)
        self.assertEqual(self.srv.json("GET", "/tasks/" + doc["task_id"], None, ok)[0], 200)
        # Probes stay open for orchestrators and scrapers.
        for p in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            self.assertEqual(self.srv.request("GET", p)[0], 200, p)


class BrokerDownTest(unittest.TestCase):
    def test_503_when_broker_unreachable(self):
        srv = Server(SERVER, "--broker", "redis://127.0.0.1:%d/0" % closed_port(),
                     "--log-level", "error")
        try:
            t0 = time.monotonic()
            st, hdrs, data = srv.request("POST", "/analyze", {"track_id": "a", "text": "b"})
            self.assertEqual(st, 503, data)
            self.assertIn("detail", json.loads(data))
            st, _, data = srv.request("GET", "/readyz")
            self.assertEqual(st, 503, data)
            self.assertIn("detail", json.loads(data))
            self.assertEqual(srv.request("GET", "/healthz")[0], 200)
            self.assertLess(time.monotonic() - t0, 10)
        finally:
            rc, err = srv.stop()
        self.assertEqual(rc, 0, err)


class ShutdownTest(unittest.TestCase):
    def test_sigterm_finishes_in_flight_tasks(self):
        srv = Server(SERVER, "--workers", "2", "--log-level", "info")
        try:
            text = "\n".join(t for _, t in lyrics())
            items = [{"track_id": i, "text": text} for i in range(100)]
            st, doc = srv.json("POST", "/analyze/batch", {"items": items})
            self.assertEqual(st, 202, doc)
            # Make sure some have started, then stop with work in flight.
            srv.json("GET", "/tasks/%s?wait=10" % doc["task_ids"][0])
        finally:
            rc, err = srv.stop()
        self.assertEqual(rc, 0, err)
        received = set(re.findall(r"task\.received (\S+)", err))
        done = set(re.findall(r"task\.succeeded (\S+)", err))
        self.assertTrue(received, err[-2000:])
        self.assertEqual(received - done, set(), "received but not finished")
        self.assertIn("stopped", err)


class UsageTest(unittest.TestCase):
    def run_server(self, *args):
        import subprocess
        from e2e_util import env
        return subprocess.run([SERVER, *args], capture_output=True, timeout=20, env=env())

    def test_usage_errors_exit_2(self):
        for args in (["--bogus"], ["--listen", "nowhere"], ["--threads", "0"],
                     ["--max-body", "x"], ["--log-level", "loud"], ["--broker"], ["extra"]):
            p = self.run_server(*args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertIn(b"aiqueue-server", p.stderr)

    def test_loglevel_spelling_is_accepted(self):
        for flag in ("--log-level", "--loglevel"):
            p = self.run_server(flag, "loud")
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn(b"unknown log level", p.stderr)
        srv = Server(SERVER, "--loglevel", "debug")
        try:
            srv.request("GET", "/healthz")
        finally:
            rc, err = srv.stop()
        self.assertEqual(rc, 0, err)
        self.assertIn("DEBUG", err)

    def test_url_that_cannot_work_exits_2(self):
        for args in (["--broker", "nosuch://x"], ["--backend", "nosuch://x"]):
            p = self.run_server("--listen", "127.0.0.1:0", *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertIn(b"nosuch", p.stderr)
            self.assertIn(b"is unknown", p.stderr)
            self.assertNotIn(b"listening", p.stdout)
        # Features this build lacks: the message names the Debian package
        # (E2E_FEATURES lists the built ones; meson sets it).
        built = os.environ.get("E2E_FEATURES")
        missing = [f for f in ("amqp", "redis", "postgres")
                   if built is not None and f not in built.split(",")]
        urls = {"amqp": ("--broker", "amqp://127.0.0.1:1/", b"librabbitmq-dev"),
                "redis": ("--broker", "redis://127.0.0.1:1/0", b"libhiredis-dev"),
                "postgres": ("--backend", "postgresql://127.0.0.1:1/x", b"libpq-dev")}
        for f in missing:
            flag, url, pkg = urls[f]
            p = self.run_server("--listen", "127.0.0.1:0", flag, url)
            self.assertEqual(p.returncode, 2, (f, p.stderr))
            self.assertIn(pkg, p.stderr)

    def test_help_and_version(self):
        p = self.run_server("--help")
        self.assertEqual(p.returncode, 0)
        self.assertIn(b"--workers", p.stdout)
        p = self.run_server("--version")
        self.assertEqual(p.returncode, 0)


if __name__ == "__main__":
    SERVER, LYRICS, DOCS = sys.argv[1:4]
    del sys.argv[1:4]
    unittest.main(verbosity=2)
