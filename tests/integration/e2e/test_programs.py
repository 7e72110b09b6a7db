"""aiqueue-worker and aiqueue CLI: flags, exit codes, banner, signals.

usage: test_programs.py AIQUEUE_WORKER_EXE AIQUEUE_CLI_EXE LYRICS_DIR [MISSING...]

MISSING: "scheme=debian-package" for each optional driver this build lacks.

memory:// lives inside one process, so the CLI refuses it; here the CLI is
checked for argument handling, start-up refusals and exit codes, and against
an unreachable broker (test_cli_broker.py runs it against a private Redis).
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
MISSING_FEATURES = []  # (scheme, Debian package) of drivers this build lacks


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

    def test_process_pool_flag(self):
        p = run(WORKER, "-P", "fork")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"worker.pool", p.stderr)
        self.assertIn(b"--pool", run(WORKER, "--help").stdout)
        proc, banner = self.start("-P", "processes", "-c", "2", "--max-tasks-per-child", "5",
                                  AIQUEUE_BROKER_URL="memory://")
        self.assertIn(b"2 (processes)", banner)

        def descendants():
            parent = {}
            for pid in os.listdir("/proc"):
                try:
                    with open("/proc/%s/stat" % pid) as f:
                        stat = f.read()
                except OSError:
                    continue
                if pid.isdigit():
                    parent[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
            found, todo = [], [proc.pid]
            while todo:
                p = todo.pop()
                kids = [k for k, v in parent.items() if v == p]
                found += kids
                todo += kids
            return found
        # The fork server and the two children it forked.
        deadline = time.monotonic() + 10
        while len(descendants()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = descendants()
        self.assertEqual(len(kids), 3, kids)
        # Ctrl-C in a terminal, or a service manager's SIGTERM, reaches them
        # all: only the worker decides, the others ignore both.
        for kid in kids:
            os.kill(kid, signal.SIGINT)
            os.kill(kid, signal.SIGTERM)
        time.sleep(0.2)
        self.assertEqual(sorted(descendants()), sorted(kids))
        rc, _, err = self.finish(proc, signal.SIGTERM)
        self.assertEqual(rc, 0, err)
        for kid in kids:  # ended and reaped before the worker exited
            self.assertFalse(os.path.exists("/proc/%d" % kid), kid)

    def test_sigint_graceful_then_abort(self):
        proc, _ = self.start()
        rc, _, err = self.finish(proc, signal.SIGINT)
        self.assertEqual(rc, 0, err)
        proc, _ = self.start()
        rc, _, err = self.finish(proc, signal.SIGINT, times=2)
        self.assertIn(rc, (0, 1), err)  # 1 when the abort arrived before the clean stop

    def test_log_level_both_spellings(self):
        for flag in ("--loglevel", "--log-level", "-l"):
            p = run(WORKER, flag, "loud")
            self.assertEqual(p.returncode, 2, (flag, p.stderr))
            self.assertIn(b"unknown log level 'loud'", p.stderr, flag)
            proc, _ = self.start(flag, "warning", AIQUEUE_BROKER_URL="memory://")
            rc, _, err = self.finish(proc, signal.SIGTERM)
            self.assertEqual(rc, 0, (flag, err))
            self.assertNotIn(b" INFO ", err, flag)  # warning and up only
        p = run(WORKER, "--help")
        self.assertIn(b"--log-level", p.stdout)

    def test_unsupported_scheme_exits_at_start(self):
        cases = [(["--broker", "nosuch://h"], [b"broker.url", b"'nosuch'", b"unknown"]),
                 (["--broker", "postgresql://h/db"], [b"broker.url", b"not a broker"]),
                 (["--backend", "amqp://h//"], [b"result.url", b"not a result store"]),
                 (["--archive", "cassandra://h"], [b"archive.url", b"'cassandra'"])]
        for scheme, package in MISSING_FEATURES:
            key = "--backend" if scheme == "postgresql" else "--broker"
            cases.append(([key, scheme + "://h/0"], [package.encode(), b"feature"]))
        for args, wants in cases:
            t0 = time.monotonic()
            p = run(WORKER, *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertLess(time.monotonic() - t0, 5, args)
            self.assertNotIn(b"[config]", p.stdout, args)  # no banner: nothing started
            self.assertIn(b"ERROR aiqueue-worker startup", p.stderr, args)
            for want in wants:
                self.assertIn(want, p.stderr, args)
        # A broker that is merely down is not a configuration error.
        url = "redis://127.0.0.1:%d/0" % closed_port()
        p = run(WORKER, "--broker", url, timeout=60)
        self.assertNotIn(p.returncode, (0, 2), p.stderr)
        self.assertNotIn(b"startup", p.stderr)

    def check_secrets_hidden(self, urls, secrets):
        """Start a worker on memory:// URLs carrying secrets, stop it, and grep
        the banner and every log line; then the same where connecting fails."""
        proc, banner = self.start("--broker", urls[0], "--backend", urls[1],
                                  "--archive", urls[2], "--loglevel", "debug")
        rc, out, err = self.finish(proc, signal.SIGTERM)
        self.assertEqual(rc, 0, err)
        self.assertIn(b"[config]", banner)
        self.assertIn(b"***", banner)
        self.assertIn(b"worker.ready", err)
        for secret in secrets:
            self.assertNotIn(secret.encode(), banner + out + err, secret)
        port = closed_port()
        p = run(WORKER, "--broker", urls[0].replace("memory://", "redis://", 1) + ":%d/0" % port,
                "--backend", urls[1].replace("memory://", "redis://", 1) + ":%d/1" % port,
                timeout=60)
        self.assertIn(p.returncode, (2, 3), p.stderr)
        for secret in secrets:
            self.assertNotIn(secret.encode(), p.stdout + p.stderr, secret)

    def test_banner_and_logs_hide_planted_secrets(self):
        s = ["PLANTEDa1", "PLANTEDb2", "PLANTEDc3", "PLANTEDd4"]
        self.check_secrets_hidden(
            ["memory://user:%s@127.0.0.1" % s[0], "memory://:%s@127.0.0.1" % s[1],
             "memory://arch?password=%s&x=1&password=%s" % (s[2], s[3])], s)

    def test_banner_hides_passwords_without_user_or_with_hash(self):
        # kombu/redis-py take "redis://SECRET@host" as a password alone, and a
        # password may hold an unencoded '#'.
        s = ["PLANTEDe5", "PLANTEDf6", "PLANTEDg7"]
        self.check_secrets_hidden(
            ["memory://%s@127.0.0.1" % s[0], "memory://user:pa#%s@127.0.0.1" % s[1],
             "memory://u:%s#x@arch" % s[2]], s)

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
        for flag in (b"--broker", b"--backend", b"--queue", b"--json", b"--help"):
            self.assertIn(flag, p.stdout)
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

    def test_memory_broker_is_refused(self):
        # memory:// lives in one process: what the CLI enqueued there would be
        # lost when it exits. Every command refuses it with what to do.
        for args in (["enqueue", "tasks.add", "[2, 3]"], ["enqueue", "--file", "-"],
                     ["inspect"], ["purge"], ["--broker", "memory://x", "enqueue", "t"]):
            p = run(CLI, *args, stdin=b'{"task": "t"}\n')
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertEqual(p.stdout, b"", args)
            for want in (b"memory://", b"--broker", b"AIQUEUE_BROKER_URL", b"process"):
                self.assertIn(want, p.stderr, args)
        # status/wait/revoke read the result store: the same for memory:// there.
        url = "redis://127.0.0.1:%d/0" % closed_port()
        for args in (["status", "x"], ["wait", "x"], ["revoke", "x"]):
            p = run(CLI, "--broker", url, *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            for want in (b"memory://", b"--backend", b"AIQUEUE_RESULT_URL"):
                self.assertIn(want, p.stderr, args)
        # The environment counts as much as the flag.
        p = run(CLI, "enqueue", "t", AIQUEUE_BROKER_URL="memory://")
        self.assertEqual(p.returncode, 2, p.stderr)

    def test_bad_value_names_the_option(self):
        for args, opt in ((["--countdown", "abc"], b"--countdown"),
                          (["--countdown=abc"], b"--countdown"),
                          (["--priority", "abc"], b"--priority"),
                          (["--expires", "0"], b"--expires"),
                          (["--max-retries", "x"], b"--max-retries"),
                          (["--eta", "abc"], b"--eta")):
            p = run(CLI, "enqueue", "tasks.add", *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            first = p.stderr.splitlines()[0]
            self.assertIn(b"for " + opt + b":", first, args)
            self.assertNotIn(b"for abc", first, args)
            self.assertIn(b"expected", first, args)

    def test_eta_with_offset_is_accepted(self):
        # Parsed by the library before any broker is involved: an offset or a
        # fraction is no usage error; a bad one is.
        url = "redis://127.0.0.1:%d/0" % closed_port()
        for eta in ("2030-01-02T03:04:05+02:00", "2030-01-02T03:04:05.123456789-0530",
                    "2030-01-02T03:04:05Z", "2030-01-02 03:04", "1893553445.5"):
            p = run(CLI, "--broker", url, "enqueue", "tasks.add", "--eta", eta, timeout=60)
            self.assertEqual(p.returncode, 3, (eta, p.stderr))  # could not connect
        for eta in ("2030-01-02T03:04:05+2", "2023-02-29T00:00:00Z", "2030-01-02T03:04:05+02:"):
            p = run(CLI, "--broker", url, "enqueue", "tasks.add", "--eta", eta)
            self.assertEqual(p.returncode, 2, (eta, p.stderr))
            self.assertIn(b"--eta", p.stderr)

    def test_unsupported_scheme_is_a_start_error(self):
        for args, want in ((["--broker", "nosuch://h"], b"'nosuch'"),
                           (["--broker", "postgresql://h/db"], b"not a broker"),
                           (["--broker", "memory://", "--backend", "amqp://h//"],
                            b"not a result store")):
            p = run(CLI, *args, "enqueue", "tasks.add")
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertIn(want, p.stderr, args)
        for scheme, package in MISSING_FEATURES:
            p = run(CLI, "--broker", scheme + "://h/0", "enqueue", "tasks.add")
            self.assertEqual(p.returncode, 2, (scheme, p.stderr))
            self.assertIn(package.encode(), p.stderr, scheme)

    def test_unreachable_broker_exits_3(self):
        url = "redis://:hunter2@127.0.0.1:%d/0" % closed_port()
        for args in (["enqueue", "tasks.add"], ["inspect"], ["purge"]):
            p = run(CLI, "--broker", url, *args, timeout=60)
            self.assertEqual(p.returncode, 3, (args, p.stderr))
            self.assertNotIn(b"hunter2", p.stdout + p.stderr)


if __name__ == "__main__":
    WORKER, CLI, LYRICS = sys.argv[1:4]
    MISSING_FEATURES = [tuple(a.split("=", 1)) for a in sys.argv[4:] if "=" in a]
    del sys.argv[1:]
    unittest.main(verbosity=2)
