"""The aiqueue CLI and aiqueue-worker as separate processes on a private
redis-server: enqueue (one task, and lyrics files as a batch), inspect,
wait, status, revoke, purge, and the dead-letter count.

    test_cli_redis.py CLI_EXE WORKER_EXE LYRICS_DIR
"""
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
REDIS_SH = os.path.join(ROOT, "scripts", "services", "redis.sh")
CLI, WORKER, LYRICS = sys.argv[1:4]


def main():
    tmp = tempfile.mkdtemp(prefix="aiq-cli-")
    subprocess.run(["bash", REDIS_SH, "start", tmp], check=True, stdout=subprocess.DEVNULL)
    port = open(os.path.join(tmp, "port")).read().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    env.update(AIQUEUE_BROKER_URL=f"redis://127.0.0.1:{port}/0",
               AIQUEUE_RESULT_URL=f"redis://127.0.0.1:{port}/1")
    worker = None

    def cli(*args, ok=(0,)):
        r = subprocess.run([CLI, "--json", *args], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode in ok, (args, r.returncode, r.stdout, r.stderr)
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()], r.returncode

    try:
        files = sorted(glob.glob(os.path.join(LYRICS, "*.txt")))
        sent, _ = cli("enqueue", "--lyrics", *files)
        assert len(sent) == len(files)
        unknown, _ = cli("enqueue", "tasks.not_here", "[1]")
        # A broken element straight on the list: the worker must dead-letter it.
        subprocess.run(["redis-cli", "-p", port, "-n", "0", "LPUSH", "celery", "not json"],
                       check=True, stdout=subprocess.DEVNULL)
        info, _ = cli("inspect")
        assert info[0]["ready"] == len(files) + 2, info

        worker = subprocess.Popen([WORKER, "--concurrency", "2", "--loglevel", "warning"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for task in sent:
            out, _ = cli("wait", task["task_id"], "--timeout", "30")
            assert out[-1]["state"] == "SUCCESS", out
        out, rc = cli("wait", unknown[0]["task_id"], "--timeout", "30", ok=(1,))
        assert out[-1]["state"] == "FAILURE", out
        assert "NotRegistered" in json.dumps(out[-1]), out
        st, _ = cli("status", sent[0]["task_id"])
        assert st[-1]["state"] == "SUCCESS", st

        info, _ = cli("inspect")
        assert info[0]["ready"] == 0 and info[0]["dead"] == 2, info

        # Purge what a stopped worker left.
        worker.terminate()
        assert worker.wait(timeout=30) == 0
        worker = None
        for i in range(3):
            cli("enqueue", "tasks.analyze_track", json.dumps([i, "text"]))
        purged, _ = cli("purge")
        assert purged[0]["removed"] == 3, purged
        info, _ = cli("inspect")
        assert info[0]["ready"] == 0, info

        # Revoke a task before it runs: it ends REVOKED, even once a worker
        # gets it.
        later, _ = cli("enqueue", "tasks.analyze_track", '[9, "la la"]', "--countdown", "1")
        cli("revoke", later[0]["task_id"])
        worker = subprocess.Popen([WORKER, "--concurrency", "1", "--loglevel", "warning"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, _ = cli("wait", later[0]["task_id"], "--timeout", "30", ok=(0, 1))
        assert out[-1]["state"] == "REVOKED", out
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info, _ = cli("inspect")
            if info[0]["ready"] == 0:
                break
            time.sleep(0.2)
        assert info[0]["ready"] == 0 and info[0]["dead"] == 2, info
        print("ok")
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
        subprocess.run(["bash", REDIS_SH, "stop", tmp], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
