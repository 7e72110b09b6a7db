"""aiqueue-beat against a private redis-server.

* two instances racing for ~6 s: the queue holds exactly one task per slot
  (no duplicate, no gap in the every-second entry);
* the leader killed with SIGKILL: the standby takes over within the lease
  (the gap is measured and printed) and sends the missed slots once;
* a bad schedule file: a message naming the entry and the field, exit 2
  (a crontab and a solar entry), and relative and solar entries accepted;
* a real Celery worker runs a task beat sent: it is an ordinary message;
* aiqueue-worker -B runs the scheduler in a thread and the tasks it sends;
* with the lease in PostgreSQL (beat.url = postgresql://..., when the build
  has PostgreSQL): the leader killed, the standby takes over, no slot twice;
  and with no beat.url and no Redis, in the PostgreSQL result store.

The redis-server runs on a free loopback port (scripts/services/redis.sh).
"""
import datetime
import json
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
REDIS_SH = os.path.join(ROOT, "scripts", "services", "redis.sh")
BEAT = os.environ["AIQ_BEAT"]
LEASE_S = 1.5
SENT = re.compile(r"^(\S+) INFO aiqueue-beat library beat: sent '([^']+)' \((\S+)\) slot (\d+) "
                  r"as (\S+)$")
LEADER = re.compile(r"^(\S+) INFO aiqueue-beat library beat: (\S+) is the leader")


def ts(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


@pytest.fixture(scope="module")
def redis():
    tmp = tempfile.mkdtemp(prefix="aiq-beat-redis-")
    subprocess.run(["bash", REDIS_SH, "start", tmp], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(tmp, "port")) as f:
        port = int(f.read().strip())
    yield port
    subprocess.run(["bash", REDIS_SH, "stop", tmp], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def cli(port, *args):
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--raw"] + list(args),
                         check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def clean_env():
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("AIQUEUE_", "CELERY_")):
            del env[k]
    return env


def schedule(tmp, entries):
    path = os.path.join(tmp, "beat.json")
    with open(path, "w") as f:
        json.dump(entries, f)
    return path


class Beat:
    def __init__(self, tmp, tag, port, sched, name, *extra):
        self.log_path = os.path.join(tmp, tag + ".log")
        self.log = open(self.log_path, "w")
        url = f"redis://127.0.0.1:{port}/0"
        self.p = subprocess.Popen([BEAT, "--schedule", sched, "--broker", url, "--backend",
                                   url, "--lease", str(LEASE_S), "--name", name] + list(extra),
                                  stdout=self.log, stderr=subprocess.STDOUT, env=clean_env())

    def lines(self):
        with open(self.log_path) as f:
            return f.read().splitlines()

    def sent(self):
        return [m.groups() for m in map(SENT.match, self.lines()) if m]

    def leader_at(self):
        for line in self.lines():
            m = LEADER.match(line)
            if m:
                return ts(m.group(1))
        return None

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        rc = self.p.wait(timeout=10)
        self.log.close()
        return rc


def queue_ids(port, queue):
    ids = []
    for raw in cli(port, "LRANGE", queue, "0", "-1"):
        ids.append(json.loads(raw)["headers"]["id"])
    return ids


def check_slots(sent, entry, step_ms):
    slots = sorted(int(s[3]) for s in sent if s[1] == entry)
    assert len(slots) == len(set(slots)), f"{entry}: a slot was sent twice: {slots}"
    if slots:
        missing = (slots[-1] - slots[0]) // step_ms + 1 - len(slots)
        assert missing == 0, f"{entry}: {missing} slot(s) missing between {slots[0]} and {slots[-1]}"
    return slots


def test_two_instances_race(redis, tmp_path):
    sched = schedule(str(tmp_path), {
        "tick": {"task": "tasks.add", "schedule": 1.0, "args": [1, 2],
                 "options": {"queue": "race"}},
        "minutely": {"task": "tasks.add", "schedule": {"crontab": {"minute": "*"}},
                     "args": [3, 4], "options": {"queue": "race"}},
    })
    # The crontab entry last ran two minutes ago (as after a downtime): the
    # new leader catches up the two minutes since, once, whoever wins.
    t0 = time.time()
    last_min = int(t0 // 60) - 2
    cli(redis, "HSET", "aiq:beat:race:last", "minutely", str(last_min * 60000))
    a = Beat(str(tmp_path), "a", redis, sched, "race")
    b = Beat(str(tmp_path), "b", redis, sched, "race")
    time.sleep(6.2)
    t1 = time.time()
    assert a.stop() == 0 and b.stop() == 0
    sent = a.sent() + b.sent()
    ids = queue_ids(redis, "race")
    ticks = check_slots(sent, "tick", 1000)
    minutes = check_slots(sent, "minutely", 60000)
    # The every-second entry: every whole second of the run, from the first
    # one after the start to the last one before the stop.
    expected = int(t1) - int(t0)
    print(f"\nrace: {len(ids)} task(s) queued, {len(sent)} sent ({len(a.sent())} by A, "
          f"{len(b.sent())} by B); tick slots {len(ticks)} (whole seconds in the run: "
          f"{expected}), minutely slots {len(minutes)} (caught up since {last_min * 60}: "
          f"{int(t1 // 60) - last_min}); duplicates "
          f"{len(ids) - len(set(ids))}, missed 0")
    assert len(ids) == len(set(ids)), "a task id is in the queue twice"
    assert len(ids) == len(sent) == len(ticks) + len(minutes)
    assert abs(len(ticks) - expected) <= 1 and len(ticks) >= 5
    assert minutes == [m * 60000 for m in range(last_min + 1, int(t1 // 60) + 1)]
    assert ticks[0] / 1000 <= t0 + 1.5 and ticks[-1] / 1000 >= t1 - 1.5


def test_leader_killed(redis, tmp_path):
    sched = schedule(str(tmp_path), {
        "tick": {"task": "tasks.add", "schedule": 1.0, "args": [1, 2],
                 "options": {"queue": "failover"}},
    })
    a = Beat(str(tmp_path), "a", redis, sched, "failover")
    deadline = time.time() + 5
    while a.leader_at() is None and time.time() < deadline:
        time.sleep(0.05)
    assert a.leader_at() is not None, "the first instance did not become the leader"
    b = Beat(str(tmp_path), "b", redis, sched, "failover")
    time.sleep(2.0)
    # Kill between two slots (at x.5 s): a leader killed inside its own
    # claim-and-publish of a slot loses that one slot by design (never a
    # duplicate); the suite tests the takeover.
    time.sleep((1.5 - time.time() % 1.0) % 1.0)
    t_kill = time.time()
    a.p.kill()
    a.p.wait()
    deadline = time.time() + LEASE_S + 3
    while b.leader_at() is None and time.time() < deadline:
        time.sleep(0.05)
    took = b.leader_at()
    assert took is not None, "the standby never took over"
    time.sleep(2.0)
    assert b.stop() == 0
    a.log.close()
    gap = took - t_kill
    sent = a.sent() + b.sent()
    ticks = check_slots(sent, "tick", 1000)
    ids = queue_ids(redis, "failover")
    print(f"\nfailover: leader killed, standby leader after {gap:.2f} s (lease {LEASE_S} s); "
          f"{len(a.sent())} sent by A, {len(b.sent())} by B; {len(ids)} queued, "
          f"duplicates {len(ids) - len(set(ids))}, missed 0")
    assert gap <= LEASE_S + LEASE_S / 3 + 0.6
    assert len(ids) == len(set(ids)) == len(sent)
    assert b.sent(), "the new leader sent nothing"
    # The slots due while nobody led were caught up by the new leader.
    assert int(b.sent()[0][3]) / 1000 <= t_kill + 1


def test_fencing_and_claims(redis, tmp_path):
    """A slot someone else claimed is not sent again, and a leader whose
    lease was taken (as when a paused leader's lease ran out) stops at its
    next claim, however sure it is that it still leads."""
    sched = schedule(str(tmp_path), {
        "tick": {"task": "tasks.add", "schedule": 1.0, "options": {"queue": "fence"}},
    })
    a = Beat(str(tmp_path), "a", redis, sched, "fence", "--lease", "30")
    deadline = time.time() + 5
    while a.leader_at() is None and time.time() < deadline:
        time.sleep(0.05)
    assert a.leader_at() is not None
    taken = (int(time.time()) + 2) * 1000
    cli(redis, "SET", f"aiq:beat:fence:sent:tick:{taken}", "other 0", "PX", "60000")
    time.sleep(taken / 1000 + 0.6 - time.time())
    slots = [int(x[3]) for x in a.sent()]
    assert taken not in slots and taken - 1000 in slots
    assert any(f"slot {taken} was sent already" in line for line in a.lines())
    # An intruder takes the lease with a newer token.
    token = cli(redis, "INCR", "aiq:beat:fence:fence")[0]
    cli(redis, "SET", "aiq:beat:fence:leader", "intruder " + token, "PX", "60000")
    t_int = time.time()
    time.sleep(2.2)
    late = [x for x in a.sent() if ts(x[0]) > t_int + 0.1]
    assert a.stop() == 0
    lost = any("lost the leader lease" in line for line in a.lines())
    print(f"\nfencing: claimed slot skipped; after the lease was taken A sent {len(late)} "
          f"task(s), lost lease logged: {lost}")
    assert late == [] and lost
    assert len(queue_ids(redis, "fence")) == len(a.sent())


def test_bad_schedule(tmp_path):
    bad = schedule(str(tmp_path), {
        "fine": {"task": "tasks.add", "schedule": 5},
        "report": {"task": "tasks.report", "schedule": {"crontab": {"hour": "25"}}},
    })
    r = subprocess.run([BEAT, "--schedule", bad], capture_output=True, text=True,
                       env=clean_env(), timeout=20)
    print(f"\nbad schedule: exit {r.returncode}: {r.stderr.strip()}")
    assert r.returncode == 2
    assert "beat entry 'report': schedule: crontab hour '25': 25 is out of range 0-23" in r.stderr
    assert "beat.json" in r.stderr
    path = os.path.join(str(tmp_path), "broken.json")
    with open(path, "w") as f:
        f.write('{"x": {"task": "t", "schedule": 1,}}')
    r = subprocess.run([BEAT, "--schedule", path], capture_output=True, text=True,
                       env=clean_env(), timeout=20)
    assert r.returncode == 2 and "broken.json: line 1" in r.stderr
    bad = schedule(str(tmp_path), {
        "dusk": {"task": "tasks.lights", "schedule": {"solar": {"event": "dusk_civil",
                                                                "lat": 52.5, "lon": 190}}},
    })
    r = subprocess.run([BEAT, "--schedule", bad], capture_output=True, text=True,
                       env=clean_env(), timeout=20)
    assert r.returncode == 2
    assert "beat entry 'dusk': schedule.solar.lon: degrees, a number from -180 to 180" in r.stderr
    good = schedule(str(tmp_path), {
        "fine": {"task": "tasks.add", "schedule": 5},
        "hourly": {"task": "tasks.add", "schedule": 3600, "relative": True},
        "dusk": {"task": "tasks.lights", "schedule": {"solar": {"event": "dusk_civil",
                                                                "lat": 52.5, "lon": 13.4}}},
    })
    r = subprocess.run([BEAT, "--schedule", good, "--check"], capture_output=True, text=True,
                       env=clean_env(), timeout=20)
    assert r.returncode == 0 and "3 entries" in r.stdout
    good = schedule(str(tmp_path), {"fine": {"task": "tasks.add", "schedule": 5}})
    conf = os.path.join(str(tmp_path), "beat.conf")
    with open(conf, "w") as f:
        f.write("# a configuration file\nbeat.timezone = Europe/Berlin\n\nbeat.lease = 5\n")
    r = subprocess.run([BEAT, "-c", conf, "--schedule", good, "--check"], capture_output=True,
                       text=True, env=clean_env(), timeout=20)
    assert r.returncode == 2 and "beat.conf:4: unknown configuration key 'beat.lease'" in r.stderr
    r = subprocess.run([BEAT, "--schedule", good, "--timezone", "Mars/Olympus"],
                       capture_output=True, text=True, env=clean_env(), timeout=20)
    assert r.returncode == 2 and "Mars/Olympus" in r.stderr


def test_celery_worker_runs_it(redis, tmp_path):
    broker = f"redis://127.0.0.1:{redis}/2"
    backend = f"redis://127.0.0.1:{redis}/3"
    sched = schedule(str(tmp_path), {
        "add": {"task": "tasks.add", "schedule": 1.0, "args": [2, 3]},
    })
    env = dict(clean_env(), BEAT_BROKER=broker, BEAT_BACKEND=backend, PYTHONPATH=HERE,
               PYTHONDONTWRITEBYTECODE="1")
    wlog = open(os.path.join(str(tmp_path), "celery.log"), "w")
    worker = subprocess.Popen(
        ["/usr/bin/python3", "-m", "celery", "-A", "beatapp", "worker", "-P", "solo",
         "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "info"],
        cwd=HERE, env=env, stdout=wlog, stderr=subprocess.STDOUT)
    log = open(os.path.join(str(tmp_path), "beat.log"), "w")
    beat = subprocess.Popen([BEAT, "--schedule", sched, "--broker", broker, "--backend",
                             backend, "--name", "celery"],
                            stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    try:
        time.sleep(2.5)
        beat.send_signal(signal.SIGTERM)
        assert beat.wait(timeout=10) == 0
        log.close()
        with open(log.name) as f:
            sent = [m.groups() for m in map(SENT.match, f.read().splitlines()) if m]
        assert sent, "beat sent nothing"
        task_id = sent[0][4]
        key = "celery-task-meta-" + task_id
        deadline = time.time() + 30
        meta = None
        while time.time() < deadline:
            raw = cli(redis, "-n", "3", "GET", key)
            if raw and raw[0]:
                meta = json.loads(raw[0])
                break
            time.sleep(0.2)
        assert meta is not None, "the Celery worker stored no result for " + task_id
        print(f"\ncelery: the Celery worker ran {task_id}: {meta['status']} {meta['result']}")
        assert meta["status"] == "SUCCESS" and meta["result"] == 5
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        wlog.close()


def test_worker_embedded_beat(tmp_path):
    sched = schedule(str(tmp_path), {
        "lyrics": {"task": "tasks.analyze_track", "schedule": 0.5,
                   "args": ["t1", "la la love, love me do"]},
    })
    log_path = os.path.join(str(tmp_path), "worker.log")
    with open(log_path, "w") as log:
        w = subprocess.Popen([os.environ["AIQ_WORKER"], "-B", "--schedule", sched, "-c", "1"],
                             stdout=log, stderr=subprocess.STDOUT, env=clean_env())
        time.sleep(2.4)
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=20) == 0
    with open(log_path) as f:
        text = f.read()
    sent = re.findall(r"beat: sent 'lyrics' \(tasks.analyze_track\) slot \d+ as (\S+)", text)
    done = re.findall(r"task.succeeded (\S+) tasks.analyze_track", text)
    print(f"\nworker -B: {len(sent)} sent by the embedded scheduler, {len(done)} succeeded")
    assert len(sent) >= 3
    assert set(sent) - set(done) <= {sent[-1]}  # the last one may still be queued at the stop


def test_catchup_policy(redis, tmp_path):
    """After downtime, missed slots at most beat.catchup_s old are sent once
    each; older ones are skipped and logged with their count (an interval,
    a crontab and a relative entry)."""
    sched = schedule(str(tmp_path), {
        "tick": {"task": "tasks.add", "schedule": 1.0, "options": {"queue": "catchup"}},
        "minutely": {"task": "tasks.add", "schedule": {"crontab": {"minute": "*"}},
                     "options": {"queue": "catchup"}},
        # Celery's relative=True: 1.5 s steps by whole seconds, on the second.
        "rel": {"task": "tasks.add", "schedule": 1.5, "relative": True,
                "options": {"queue": "catchup"}},
    })
    t0 = time.time()
    last_tick = (int(t0) - 600) * 1000
    last_min = int(t0 // 60) - 10
    cli(redis, "HSET", "aiq:beat:catchup:last", "tick", str(last_tick), "minutely",
        str(last_min * 60000), "rel", str(last_tick))
    a = Beat(str(tmp_path), "a", redis, sched, "catchup", "--catchup", "3")
    time.sleep(1.5)
    assert a.stop() == 0
    skipped = {m.group(1): int(m.group(2)) for m in
               (re.search(r"beat: '(\w+)': skipped (\d+) missed slot", line)
                for line in a.lines()) if m}
    ticks = check_slots(a.sent(), "tick", 1000)
    minutes = check_slots(a.sent(), "minutely", 60000)
    rels = check_slots(a.sent(), "rel", 1000)
    print(f"\ncatch-up (window 3 s, down 600 s): tick {skipped.get('tick')} skipped, "
          f"{len(ticks)} sent from {(ticks[0] - last_tick) // 1000} s after the last run; "
          f"minutely {skipped.get('minutely')} skipped, {len(minutes)} sent")
    # Every slot since the last run is either skipped or sent, once.
    assert skipped["tick"] + len(ticks) == (ticks[-1] - last_tick) // 1000
    assert ticks[0] / 1000 >= t0 - 3 - 1  # nothing older than the window was sent
    assert ticks[0] / 1000 <= t0 - 1      # but the missed slots within it were
    # The relative entry: the same seconds, skipped in one step as well.
    assert rels and all(r % 1000 == 0 for r in rels)
    assert skipped["rel"] + len(rels) == (rels[-1] - last_tick) // 1000
    assert t0 - 3 - 1 <= rels[0] / 1000 <= t0 - 1
    newest = int(time.time() // 60)
    assert skipped["minutely"] + len(minutes) in (newest - last_min, newest - last_min - 1)
    assert len(minutes) <= 1


if os.environ.get("AIQ_BEAT_POSTGRES"):
    PG_SH = os.path.join(ROOT, "scripts", "services", "postgres.sh")

    @pytest.fixture(scope="module")
    def postgres():
        tmp = tempfile.mkdtemp(prefix="aiq-beat-pg-")
        subprocess.run(["bash", PG_SH, "start", tmp], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(tmp, "url")) as f:
            url = f.read().strip()
        yield url
        subprocess.run(["bash", PG_SH, "stop", tmp], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def test_postgres_lease(redis, postgres, tmp_path):
        sched = schedule(str(tmp_path), {
            "tick": {"task": "tasks.add", "schedule": 1.0, "options": {"queue": "pg"}},
        })
        a = Beat(str(tmp_path), "a", redis, sched, "pg", "--coord", postgres)
        deadline = time.time() + 10
        while a.leader_at() is None and time.time() < deadline:
            time.sleep(0.05)
        assert a.leader_at() is not None, "\n".join(a.lines())
        b = Beat(str(tmp_path), "b", redis, sched, "pg", "--coord", postgres)
        time.sleep(2.0)
        time.sleep((1.5 - time.time() % 1.0) % 1.0)
        t_kill = time.time()
        a.p.kill()
        a.p.wait()
        deadline = time.time() + LEASE_S + 3
        while b.leader_at() is None and time.time() < deadline:
            time.sleep(0.05)
        took = b.leader_at()
        assert took is not None, "the standby never took over"
        time.sleep(1.5)
        assert b.stop() == 0
        a.log.close()
        sent = a.sent() + b.sent()
        ticks = check_slots(sent, "tick", 1000)
        ids = queue_ids(redis, "pg")
        print(f"\npostgres lease: standby leader {took - t_kill:.2f} s after the kill (lease "
              f"{LEASE_S} s); {len(a.sent())} sent by A, {len(b.sent())} by B, {len(ids)} "
              f"queued, duplicates {len(ids) - len(set(ids))}, missed 0")
        assert took - t_kill <= LEASE_S + LEASE_S / 3 + 0.6
        assert len(ids) == len(set(ids)) == len(sent) == len(ticks)
        assert b.sent() and int(b.sent()[0][3]) / 1000 <= t_kill + 1
        assert not any("NOTICE" in line for line in b.lines())

    def test_postgres_result_store_holds_the_lease(postgres, tmp_path):
        """No beat.url and no Redis: a PostgreSQL result store keeps the lease."""
        sched = schedule(str(tmp_path), {"tick": {"task": "tasks.add", "schedule": 1.0}})
        log_path = os.path.join(str(tmp_path), "pgdefault.log")
        with open(log_path, "w") as log:
            p = subprocess.Popen([BEAT, "--schedule", sched, "--broker", "memory://beat-pg",
                                  "--backend", postgres, "--lease", str(LEASE_S), "--name",
                                  "pg-default"], stdout=log, stderr=subprocess.STDOUT,
                                 env=clean_env())
            deadline = time.time() + 10
            text = ""
            while time.time() < deadline and "is the leader" not in text:
                time.sleep(0.05)
                with open(log_path) as f:
                    text = f.read()
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=10) == 0, text
        assert "lease and state in PostgreSQL" in text, text
        assert "is the leader" in text, text
