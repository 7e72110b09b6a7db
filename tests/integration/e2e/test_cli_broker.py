"""The aiqueue CLI against a private redis-server: what it prints and sends
for each command and option, batches from --file and --lyrics, and where a
bad --file line's JSON breaks.

usage: test_cli_broker.py AIQUEUE_CLI_EXE LYRICS_DIR
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
REDIS_SH = os.path.join(ROOT, "scripts", "services", "redis.sh")
sys.path.insert(0, HERE)
from e2e_util import env  # noqa: E402

CLI = LYRICS = None
TMP = PORT = None


def run(*args, stdin=None, timeout=60):
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, timeout=timeout,
                          env=env(AIQUEUE_BROKER_URL="redis://127.0.0.1:%s/0" % PORT,
                                  AIQUEUE_RESULT_URL="redis://127.0.0.1:%s/1" % PORT))


def redis(*args):
    return subprocess.run(["redis-cli", "-p", PORT, "-n", "0", *args], check=True,
                          capture_output=True, text=True).stdout


def queued(queue):
    """The Celery messages waiting in a Redis list, oldest first (LPUSH, BRPOP)."""
    raw = subprocess.run(["redis-cli", "-p", PORT, "-n", "0", "--raw", "LRANGE", queue, "0",
                          "-1"], check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in reversed(raw.splitlines()) if line.strip()]


def setUpModule():
    global TMP, PORT
    TMP = tempfile.mkdtemp(prefix="aiq-cli-broker-")
    subprocess.run(["bash", REDIS_SH, "start", TMP], check=True, stdout=subprocess.DEVNULL)
    PORT = open(os.path.join(TMP, "port")).read().strip()


def tearDownModule():
    subprocess.run(["bash", REDIS_SH, "stop", TMP], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    shutil.rmtree(TMP, ignore_errors=True)


class CliBrokerTest(unittest.TestCase):
    def setUp(self):
        redis("FLUSHALL")

    def test_enqueue_with_options(self):
        p = run("enqueue", "tasks.add", "[2, 3]", '{"x": 1}', "--max-retries", "2",
                "--queue", "q1")
        self.assertEqual(p.returncode, 0, p.stderr)
        tid = str(uuid.UUID(p.stdout.decode().strip()))
        (msg,) = queued("q1")
        self.assertEqual(msg["headers"]["id"], tid)
        self.assertEqual(msg["headers"]["task"], "tasks.add")
        self.assertEqual(msg["headers"]["retries"], 0)
        p = run("enqueue", "tasks.add", "--countdown", "5", "--expires", "60", "--priority", "3")
        self.assertEqual(p.returncode, 0, p.stderr)
        tid = str(uuid.uuid4())
        p = run("--json", "enqueue", "tasks.add", "--task-id", tid)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["task_id"], tid)

    def test_eta_with_offset_and_fraction(self):
        # One parser (the library's): the offset is applied, the fraction kept
        # (ETAs travel in milliseconds).
        for eta, want in (("2030-01-02T05:04:05.25+02:00", "2030-01-02T03:04:05.250000+00:00"),
                          ("2030-01-01T21:34:05-0530", "2030-01-02T03:04:05.000000+00:00"),
                          ("2030-01-02T03:04:05.123456789Z", "2030-01-02T03:04:05.123000+00:00")):
            redis("DEL", "celery")
            p = run("enqueue", "tasks.add", "--eta", eta)
            self.assertEqual(p.returncode, 0, (eta, p.stderr))
            (msg,) = queued("celery")
            self.assertEqual(msg["headers"]["eta"], want, eta)

    def test_batch_file_reports_where_json_breaks(self):
        lines = "\n".join(json.dumps({"task": "tasks.add", "args": [i, i]}) for i in range(5))
        p = run("--json", "enqueue", "--file", "-", stdin=(lines + "\n\n").encode())
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(len(p.stdout.splitlines()), 5)
        self.assertNotIn(b"[", p.stderr)  # no progress bar off a terminal
        body = b'{"task": "t"}\n{"args": 1}\n{"task": "t", "args": [1,}\nnope\n{"task": "u"}\n'
        p = run("enqueue", "--file", "-", stdin=body)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(len(p.stdout.splitlines()), 2)  # lines 1 and 5 were sent
        err = p.stderr.decode().splitlines()
        self.assertEqual(len(err), 3, err)
        # Valid JSON of the wrong shape: the expected shape.
        self.assertIn("line 2", err[0])
        self.assertIn('expected {"task": str', err[0])
        # Broken JSON: where, and jansson's reason.
        self.assertRegex(err[1], r"line 3, column \d+: invalid JSON: .+")
        self.assertNotIn("expected {", err[1])
        self.assertRegex(err[2], r"line 4, column \d+: invalid JSON: .+")
        with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as f:
            f.write(b'{"task": "t"}\n{"task": "t",\n')
            f.flush()
            p = run("enqueue", "--file", f.name)
            self.assertEqual(p.returncode, 1)
            self.assertRegex(p.stderr.decode(), r"line 2, column \d+: invalid JSON")

    def test_lyrics_batch(self):
        files = sorted(os.path.join(LYRICS, f) for f in os.listdir(LYRICS))
        p = run("--json", "enqueue", "--lyrics", *files)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(len(p.stdout.splitlines()), len(files))
        p = run("enqueue", "--lyrics", "/nonexistent.txt")
        self.assertEqual(p.returncode, 1)

    def test_status_wait_inspect_purge_revoke(self):
        tid = str(uuid.uuid4())
        p = run("--json", "status", tid)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["state"], "PENDING")
        p = run("wait", tid, "--timeout", "0.2")
        self.assertEqual(p.returncode, 4, p.stderr)
        run("enqueue", "tasks.add")
        p = run("--json", "inspect")
        self.assertEqual(p.returncode, 0, p.stderr)
        doc = json.loads(p.stdout)
        self.assertEqual((doc["queue"], doc["ready"], doc["dead_letter_queue"], doc["dead"]),
                         ("celery", 1, "celery.dead", 0))
        p = run("--json", "purge", "other")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout), {"queue": "other", "removed": 0})
        p = run("--json", "--queue", "celery", "purge")
        self.assertEqual(json.loads(p.stdout), {"queue": "celery", "removed": 1})
        p = run("revoke", tid)
        self.assertEqual(p.returncode, 0, p.stderr)


if __name__ == "__main__":
    CLI, LYRICS = sys.argv[1:3]
    del sys.argv[1:]
    unittest.main(verbosity=2)
