"""Helpers for the end-to-end tests: start programs on free loopback ports,
talk HTTP with the standard library, and always stop what was started."""
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import time

# Only the variables a test sets reach the programs: no stray AIQUEUE_* or
# CELERY_* from the caller's environment.
BASE_ENV = {k: v for k, v in os.environ.items()
            if not k.startswith(("AIQUEUE_", "CELERY_"))}


def env(**extra):
    e = dict(BASE_ENV)
    e.update(extra)
    return e


class Server:
    """An aiqueue-server process listening on a free port (--listen :0)."""

    def __init__(self, exe, *args, extra_env=None, startup_timeout=10):
        self.proc = subprocess.Popen(
            [exe, "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env(**(extra_env or {})))
        self.port = None
        deadline = time.monotonic() + startup_timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if r:
                ch = os.read(self.proc.stdout.fileno(), 1)
                if not ch:
                    break
                line += ch
        if not line.startswith(b"listening on http://"):
            self.kill()
            raise RuntimeError("server did not start: %r %r" % (line, self.stderr()))
        self.port = int(line.strip().rsplit(b":", 1)[1])

    def stderr(self):
        try:
            return self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
        except Exception:
            return ""

    def conn(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=30):
        """One request on its own connection: (status, headers, body bytes)."""
        h = {"Connection": "close"}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        c = self.conn(timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None, timeout=30):
        status, hdrs, data = self.request(method, path, body, headers, timeout)
        return status, json.loads(data) if data else None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signal the server and return its exit status and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode, err.decode(errors="replace")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
