"""Units and shared flag names of aiqueue-worker, aiqueue-server and aiqueue.

Durations on the command line are seconds (as in Celery and the HTTP API)
and also take a unit (500ms, 30s, 2m, 1h); the programs spell shared
things alike (-b/--broker, --backend/--result-backend, -l/--log-level,
-c/--concurrency, with the old names kept). With a private redis-server
(when this build has redis) the worker, loaded with the example plugin,
and the CLI talk through it using only the shared and unit-suffixed flags.

    test_units_flags.py WORKER SERVER CLI PLUGIN HAVE_REDIS
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_util import Server, env  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REDIS_SH = os.path.join(HERE, "..", "..", "..", "scripts", "services", "redis.sh")
WORKER = SERVER = CLI = PLUGIN = None
HAVE_REDIS = False

UNITS_HINT = b"500ms, 30s, 2m, 1h"


def run(*args, timeout=30, **extra_env):
    return subprocess.run(list(args), capture_output=True, timeout=timeout,
                          env=env(**extra_env))


def start_worker(*args, **extra_env):
    """Start aiqueue-worker; return (process, banner)."""
    proc = subprocess.Popen([WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env(**extra_env))
    deadline = time.monotonic() + 10
    out = b""
    while not (b"[analyzers]" in out and out.endswith(b"\n\n")) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out += line
    return proc, out


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


class HelpTexts(unittest.TestCase):
    def test_every_help_says_seconds_and_units(self):
        for exe, args in ((WORKER, ["--help"]), (SERVER, ["--help"]), (CLI, ["--help"]),
                          (CLI, ["wait", "--help"])):
            p = run(exe, *args)
            self.assertEqual(p.returncode, 0, (exe, p.stderr))
            self.assertIn(UNITS_HINT, p.stdout, exe)
        for exe in (WORKER, SERVER, CLI):
            self.assertIn(b"milliseconds", run(exe, "--help").stdout, exe)

    def test_shared_flag_names_in_help(self):
        texts = {exe: run(exe, "--help").stdout for exe in (WORKER, SERVER, CLI)}
        for exe, text in texts.items():
            for flag in (b"-b, --broker", b"--backend", b"--result-backend"):
                self.assertIn(flag, text, (exe, flag))
        for exe in (WORKER, SERVER):
            for flag in (b"-c, --concurrency", b"--log-level", b"--loglevel"):
                self.assertIn(flag, texts[exe], (exe, flag))
        self.assertIn(b"--workers", texts[SERVER])  # the old name, still documented


class BadDurations(unittest.TestCase):
    def test_bad_duration_is_a_usage_error_naming_the_flag(self):
        cases = [
            (WORKER, ["--time-limit", "5x"], b"--time-limit"),
            (WORKER, ["--soft-time-limit", "-1"], b"--soft-time-limit"),
            (WORKER, ["--time-limit", "8d"], b"--time-limit"),
            (SERVER, ["--max-wait", "ten"], b"--max-wait"),
            (SERVER, ["--idle-timeout", "500ms"], b"--idle-timeout"),  # not whole seconds
            (SERVER, ["--breaker-cooldown", "1 s"], b"--breaker-cooldown"),
            (SERVER, ["--header-timeout", "inf"], b"--header-timeout"),
            (CLI, ["wait", "x", "--timeout", "1q"], b"--timeout"),
            (CLI, ["enqueue", "t", "--countdown", "nan"], b"--countdown"),
            (CLI, ["enqueue", "t", "--expires", "0ms"], b"--expires"),
        ]
        for exe, args, flag in cases:
            p = run(exe, *args)
            self.assertEqual(p.returncode, 2, (exe, args, p.stderr))
            self.assertIn(flag, p.stderr, (exe, args))
            self.assertIn(UNITS_HINT, p.stderr, (exe, args))


class WorkerFlags(unittest.TestCase):
    def test_time_limits_take_seconds_and_units(self):
        # 0.25 plain seconds and 1500ms; shown in milliseconds as the keys hold them.
        proc, banner = start_worker("-b", "memory://", "--result-backend", "memory://",
                                    "--queue", "q1", "-c", "1", "--log-level", "warning",
                                    "--soft-time-limit", "0.25", "--time-limit", "1500ms")
        rc, _, err = stop(proc)
        self.assertEqual(rc, 0, err)
        self.assertIn(b"time limits: soft 250 ms, hard 1500 ms", banner)
        self.assertIn(b"q1", banner)
        self.assertIn(b"1 (threads)", banner)
        proc, banner = start_worker("--time-limit", "2m", "--loglevel", "error",
                                    AIQUEUE_BROKER_URL="memory://")
        rc, _, err = stop(proc)
        self.assertEqual(rc, 0, err)
        self.assertIn(b"time limits: soft 0 ms, hard 120000 ms", banner)

    def test_environment_keeps_milliseconds(self):
        proc, banner = start_worker(AIQUEUE_TASK_TIME_LIMIT_MS="700",
                                    AIQUEUE_BROKER_URL="memory://")
        rc, _, err = stop(proc)
        self.assertEqual(rc, 0, err)
        self.assertIn(b"hard 700 ms", banner)


class ServerFlags(unittest.TestCase):
    LYRICS = {"track_id": "t1", "text": "la la la\nla la la\n"}

    def analyze(self, srv):
        status, body = srv.json("POST", "/analyze", self.LYRICS)
        self.assertIn(status, (200, 202), body)
        return body["task_id"]

    def test_embedded_worker_with_shared_names_and_units(self):
        for workers_flag in (["-c", "1"], ["--concurrency", "1"], ["--workers", "1"]):
            srv = Server(SERVER, "-b", "memory://", "--result-backend", "memory://",
                         *workers_flag, "-l", "warning", "--max-wait", "30s",
                         "--idle-timeout", "2m", "--header-timeout", "10s",
                         "--breaker-cooldown", "500ms")
            try:
                task_id = self.analyze(srv)
                status, body = srv.json("GET", "/tasks/%s?wait=5s" % task_id)
                self.assertEqual(status, 200, body)
                self.assertEqual(body["state"], "SUCCESS", (workers_flag, body))
                status, body = srv.json("GET", "/tasks/%s?wait=1500ms" % task_id)
                self.assertEqual(body["state"], "SUCCESS", body)
                status, body = srv.json("GET", "/tasks/%s?wait=soon" % task_id)
                self.assertEqual(status, 422, body)
                self.assertIn("500ms", json.dumps(body))
            finally:
                rc, err = srv.stop()
            self.assertEqual(rc, 0, err)

    def test_max_wait_in_milliseconds_caps_a_long_poll(self):
        # No worker: the task stays PENDING, so ?wait= runs into the cap.
        # "500ms" must mean half a second, not 500 seconds.
        srv = Server(SERVER, "--max-wait", "500ms")
        try:
            task_id = self.analyze(srv)
            t0 = time.monotonic()
            status, body = srv.json("GET", "/tasks/%s?wait=10" % task_id)
            took = time.monotonic() - t0
            self.assertEqual(status, 200, body)
            self.assertEqual(body["state"], "PENDING", body)
            self.assertGreaterEqual(took, 0.4)
            self.assertLess(took, 5)
            t0 = time.monotonic()
            status, body = srv.json("GET", "/tasks/%s?wait=200ms" % task_id)
            took = time.monotonic() - t0
            self.assertEqual(body["state"], "PENDING", body)
            self.assertGreaterEqual(took, 0.15)
            self.assertLess(took, 0.45)
        finally:
            srv.stop()


class AcrossPrograms(unittest.TestCase):
    """The worker (with the example plugin) and the CLI over one redis-server,
    every flag in its shared or unit-suffixed spelling."""

    def setUp(self):
        if not HAVE_REDIS:
            self.skipTest("this build has no redis driver")
        self.tmp = tempfile.mkdtemp(prefix="aiq-units-")
        subprocess.run(["bash", REDIS_SH, "start", self.tmp], check=True,
                       stdout=subprocess.DEVNULL)
        with open(os.path.join(self.tmp, "port")) as f:
            port = f.read().strip()
        self.broker = "redis://127.0.0.1:%s/0" % port
        self.backend = "redis://127.0.0.1:%s/1" % port

    def tearDown(self):
        subprocess.run(["bash", REDIS_SH, "stop", self.tmp], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cli(self, *args, ok=(0,)):
        p = run(CLI, "-b", self.broker, "--result-backend", self.backend, "--json", *args,
                timeout=60)
        self.assertIn(p.returncode, ok, (args, p.stdout, p.stderr))
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def test_plugin_task_through_worker_and_cli(self):
        proc, banner = start_worker("-b", self.broker, "--result-backend", self.backend,
                                    "--queue", "units", "-c", "2", "--log-level", "warning",
                                    "--plugin", PLUGIN, "--time-limit", "30s")
        try:
            self.assertIn(b"hard 30000 ms", banner)
            sent = self.cli("enqueue", "textstats.word_count",
                            '["Paper boats on the river"]', '{"min_word_length": 4}',
                            "--queue", "units", "--countdown", "200ms", "--expires", "10m")
            task_id = sent[0]["task_id"]
            out = self.cli("wait", task_id, "--timeout", "30s")
            self.assertEqual(out[-1]["state"], "SUCCESS", out)
            self.assertEqual(out[-1]["result"], {"words": 3, "min_word_length": 4}, out)
            # A wrong argument type fails with the accessor's precise message.
            bad = self.cli("enqueue", "textstats.word_count", "[42]", "--queue", "units")
            out = self.cli("wait", bad[0]["task_id"], "--timeout", "0.5m", ok=(1,))
            self.assertEqual(out[-1]["state"], "FAILURE", out)
            self.assertIn("positional argument 0 is an integer, not a string",
                          json.dumps(out[-1]), out)
        finally:
            rc, _, err = stop(proc)
        self.assertEqual(rc, 0, err)


if __name__ == "__main__":
    WORKER, SERVER, CLI, PLUGIN = sys.argv[1:5]
    HAVE_REDIS = sys.argv[5] == "1"
    unittest.main(argv=sys.argv[:1], verbosity=2)
