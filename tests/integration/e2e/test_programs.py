"""aiqueue-worker and aiqueue CLI: flags, exit codes, banner, signals.

usage: test_programs.py AIQUEUE_WORKER_EXE AIQUEUE_CLI_EXE LYRICS_DIR

memory:// lives inside one process, so the CLI's round trips with a worker
need a real broker; here the CLI is checked on memory:// (argument handling,
output, exit codes) and against an unreachable broker.
"""
import json
import os
import signal
import subprocess
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_util import closed_port, env  # noqa: E402

WORKER = CLI = LYRICS = None


def run(*args, stdin=None, timeout=30, **extra_env):
    return subprocess.run(list(args), input=stdin, capture_output=True, timeout=timeout,
                          env=env(**extra_env))


class WorkerTest(unittest.TestCase):
    def test_help_version_usage(self):
        p = run(WORKER, "--help")
        self.assertEqual(p.returncode, 0)
        for flag in (b"--broker", b"--backend", b"--queues", b"--concurrency", b"--prefetch",
                     b"--loglevel", b"--hostname", b"--plugin", b"Exit codes"):
            self.assertIn(flag, p.stdout)
        self.assertEqual(run(WORKER, "--version").returncode, 0)
        for args in (["--bogus"], ["--concurrency", "0"], ["--concurrency", "x"],
                     ["--prefetch", "-1"], ["--loglevel", "loud"], ["--broker"], ["stray"]):
            p = run(WORKER, *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertIn(b"aiqueue-worker", p.stderr)

    def test_bad_environment_is_usage_error(self):
        p = run(WORKER, AIQUEUE_WORKER_CONCURRENCY="many")
        self.assertEqual(p.returncode, 2, p.stderr)

    def test_cannot_connect_exits_3_and_redacts(self):
        url = "redis://:hunter2@127.0.0.1:%d/0" % closed_port()
        p = run(WORKER, "--broker", url, timeout=60)
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertNotIn(b"hunter2", p.stdout + p.stderr)

    def start(self, *args, **extra_env):
        proc = subprocess.Popen([WORKER, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env(**extra_env))
        deadline = time.monotonic() + 10
        out = b""
        while not (b"[analyzers]" in out and out.endswith(b"\n\n")) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out += line
        return proc, out

    def finish(self, proc, sig, times=1):
        try:
            for _ in range(times):
                proc.send_signal(sig)
                time.sleep(0.2)
            out, err = proc.communicate(timeout=20)
            return proc.returncode, out, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    def test_banner_and_sigterm(self):
        proc, banner = self.start("--concurrency", "3", "--queues", "alpha,beta",
                                  "--hostname", "w1@test", "--loglevel", "debug",
                                  AIQUEUE_BROKER_URL="memory://")
        rc, out, err = self.finish(proc, signal.SIGTERM)
        self.assertEqual(rc, 0, err)
        for want in (b"w1@test", b"memory://", b"alpha,beta", b"3 (threads)",
                     b"tasks.analyze_track", b"lyrics"):
            self.assertIn(want, banner)
        self.assertIn(b"worker.stopped clean stop", err)
        # Structured lines: "<timestamp> <LEVEL> aiqueue-worker <event> ...".
        for line in err.decode().splitlines():
            if line.startswith("aiqueue-worker:"):
                continue  # the signal handler's own notice
            parts = line.split(" ")
            self.assertRegex(parts[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line)
            self.assertIn(parts[1], ("DEBUG", "INFO", "WARNING", "ERROR"))
            self.assertEqual(parts[2], "aiqueue-worker")

    def test_sigint_graceful_then_abort(self):
        proc, _ = self.start()
        rc, _, err = self.finish(proc, signal.SIGINT)
        self.assertEqual(rc, 0, err)
        proc, _ = self.start()
        rc, _, err = self.finish(proc, signal.SIGINT, times=2)
        self.assertIn(rc, (0, 1), err)  # 1 when the abort arrived before the clean stop

    def test_plugin_missing_file(self):
        p = run(WORKER, "--plugin", "/nonexistent/plugin.so")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"plugin", p.stderr)


class CliTest(unittest.TestCase):
    def test_help(self):
        p = run(CLI, "--help")
        self.assertEqual(p.returncode, 0)
        for cmd in (b"enqueue", b"status", b"wait", b"revoke", b"purge", b"inspect"):
            self.assertIn(cmd, p.stdout)
        for cmd in ("enqueue", "status", "wait", "revoke", "purge", "inspect"):
            p = run(CLI, cmd, "--help")
            self.assertEqual(p.returncode, 0, cmd)
            self.assertIn(b"usage: aiqueue " + cmd.encode(), p.stdout)

    def test_usage_errors(self):
        for args in ([], ["frobnicate"], ["--bogus", "status", "x"], ["status"],
                     ["status", "a", "b"], ["wait"], ["revoke"], ["purge", "a", "b"],
                     ["enqueue"], ["enqueue", "t", "{not json"], ["enqueue", "t", "{}"],
                     ["enqueue", "t", "[]", "[]"], ["enqueue", "t", "[]", "{}", "x"],
                     ["enqueue", "t", "--priority", "300"], ["enqueue", "t", "--countdown", "-1"],
                     ["enqueue", "t", "--eta", "someday"], ["status", "x", "--countdown", "1"],
                     ["status", "x", "--timeout", "1"], ["wait", "x", "--timeout", "abc"],
                     ["enqueue", "--file"], ["enqueue", "--lyrics"]):
            p = run(CLI, *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertTrue(p.stderr, args)

    def test_enqueue_on_memory(self):
        p = run(CLI, "enqueue", "tasks.add", "[2, 3]", '{"x": 1}', "--countdown", "5",
                "--priority", "3", "--queue", "q1")
        self.assertEqual(p.returncode, 0, p.stderr)
        uuid.UUID(p.stdout.decode().strip())
        tid = str(uuid.uuid4())
        p = run(CLI, "--json", "enqueue", "tasks.add", "--task-id", tid)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["task_id"], tid)

    def test_batch_from_stdin_and_lyrics(self):
        lines = "\n".join(json.dumps({"task": "tasks.add", "args": [i, i]}) for i in range(5))
        p = run(CLI, "--json", "enqueue", "--file", "-", stdin=(lines + "\n\n").encode())
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(len(p.stdout.splitlines()), 5)
        self.assertNotIn(b"[", p.stderr)  # no progress bar off a terminal
        p = run(CLI, "enqueue", "--file", "-", stdin=b'{"task": "t"}\n{"args": 1}\nnope\n')
        self.assertEqual(p.returncode, 1)
        self.assertEqual(len(p.stdout.splitlines()), 1)
        self.assertIn(b"line 2", p.stderr)
        self.assertIn(b"line 3", p.stderr)
        files = sorted(os.path.join(LYRICS, f) for f in os.listdir(LYRICS))
        p = run(CLI, "--json", "enqueue", "--lyrics", *files)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(len(p.stdout.splitlines()), len(files))
        p = run(CLI, "enqueue", "--lyrics", "/nonexistent.txt")
        self.assertEqual(p.returncode, 1)

    def test_status_wait_inspect_purge_on_memory(self):
        tid = str(uuid.uuid4())
        p = run(CLI, "--json", "status", tid)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["state"], "PENDING")
        p = run(CLI, "wait", tid, "--timeout", "0.2")
        self.assertEqual(p.returncode, 4, p.stderr)
        p = run(CLI, "--json", "inspect")
        self.assertEqual(p.returncode, 0, p.stderr)
        doc = json.loads(p.stdout)
        self.assertEqual((doc["queue"], doc["ready"], doc["dead_letter_queue"], doc["dead"]),
                         ("celery", 0, "celery.dead", 0))
        p = run(CLI, "--json", "purge", "other")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout), {"queue": "other", "removed": 0})
        p = run(CLI, "revoke", tid)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_unreachable_broker_exits_3(self):
        url = "redis://:hunter2@127.0.0.1:%d/0" % closed_port()
        for args in (["enqueue", "tasks.add"], ["inspect"], ["purge"]):
            p = run(CLI, "--broker", url, *args, timeout=60)
            self.assertEqual(p.returncode, 3, (args, p.stderr))
            self.assertNotIn(b"hunter2", p.stdout + p.stderr)


if __name__ == "__main__":
    WORKER, CLI, LYRICS = sys.argv[1:4]
    del sys.argv[1:4]
    unittest.main(verbosity=2)
