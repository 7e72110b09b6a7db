"""aiqueue-server's circuit breaker closes again once the broker is back: a
private redis-server that is down when the server starts, then comes up on
the same port.

usage: test_server_recovery.py AIQUEUE_SERVER_EXE
"""
import os
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from e2e_util import Server  # noqa: E402
from test_server_limits import metrics  # noqa: E402

REDIS_SH = os.path.join(HERE, "..", "..", "..", "scripts", "services", "redis.sh")
SERVER = None


def redis(cmd, tmp):
    subprocess.run(["bash", REDIS_SH, cmd, tmp], check=True, stdout=subprocess.DEVNULL)


class BreakerRecoveryTest(unittest.TestCase):
    def test_breaker_closes_when_the_broker_comes_back(self):
        tmp = tempfile.mkdtemp(prefix="aiq-breaker-")
        redis("start", tmp)  # for a port of its own, then down
        port = open(os.path.join(tmp, "port")).read().strip()
        redis("stop", tmp)
        srv = Server(SERVER, "--broker", "redis://127.0.0.1:%s/0" % port,
                     "--backend", "redis://127.0.0.1:%s/1" % port,
                     "--breaker-cooldown", "1", "--log-level", "error")
        try:
            body = {"track_id": "a", "text": "b"}
            st, hdrs, data = srv.request("POST", "/analyze", body)
            self.assertEqual(st, 503, data)
            self.assertIn("retry-after", hdrs)
            self.assertEqual(metrics(srv)["aiqueue_broker_circuit_open"], 1)
            redis("restart", tmp)
            deadline = time.monotonic() + 15
            while True:
                st, hdrs, data = srv.request("POST", "/analyze", body)
                if st == 202:
                    break
                self.assertEqual(st, 503, data)
                self.assertLess(time.monotonic(), deadline, "breaker never closed")
                time.sleep(0.3)
            self.assertEqual(metrics(srv)["aiqueue_broker_circuit_open"], 0)
            self.assertEqual(srv.request("GET", "/readyz")[0], 200)
        finally:
            rc, err = srv.stop()
            redis("stop", tmp)
        self.assertEqual(rc, 0, err)


if __name__ == "__main__":
    SERVER = sys.argv[1]
    del sys.argv[1:2]
    unittest.main(verbosity=2)
