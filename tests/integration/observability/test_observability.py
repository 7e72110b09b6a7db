"""The Grafana dashboards and the Prometheus alert rules of deploy/ against
what the programs really export.

A private redis-server (scripts/services) carries the tasks of a real
aiqueue-worker (--metrics-port) and of a real aiqueue-server (with an embedded
worker, -c 1). After a few tasks through each, both /metrics are scraped, and
every metric name used by an expression of a dashboard (panels and template
variables) or of an alert rule must be a sample name one of them exports: a
renamed metric, or a histogram family used without its _bucket/_sum/_count
suffix, fails here. The rules also pass `promtool check rules` and their unit
tests (`promtool test rules`), and the dashboard expressions parse as PromQL.
"""
import glob
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SERVICES = os.path.join(ROOT, "scripts", "services")
INTEROP = os.path.join(ROOT, "tests", "integration", "interop")
E2E = os.path.join(ROOT, "tests", "integration", "e2e")
WORKER = os.environ["OBS_WORKER"]
SERVER = os.environ["OBS_SERVER"]
PROMTOOL = os.environ["OBS_PROMTOOL"]
RULES = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")
RULES_TEST = os.path.join(ROOT, "deploy", "prometheus", "alerts_test.yml")
DASHBOARDS = sorted(glob.glob(os.path.join(ROOT, "deploy", "compose", "grafana", "dashboards",
                                           "*.json")))

for p in (INTEROP, E2E):
    if p not in sys.path:
        sys.path.insert(0, p)
import celeryapp  # noqa: E402
from e2e_util import Server  # noqa: E402

# Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? (\S+)$')


def metric_names(expr):
    """Metric names an expression selects (not functions, labels, keywords)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", e):
        if m.group(2) or m.group(1).lower() in KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def test_metric_names_parser():
    """The extraction itself: it must see metrics and only metrics."""
    assert metric_names('histogram_quantile(0.95, sum by (task, le) (rate('
                        'aiqueue_x_seconds_bucket{task=~"$task"}[$__rate_interval])))') == {
        "aiqueue_x_seconds_bucket"}
    assert metric_names('sum(rate(a_total{state="FAILURE"}[5m])) / sum without (instance) '
                        '(rate(b_total[5m])) > 0.1 and on (queue) c') == {"a_total", "b_total",
                                                                          "c"}
    assert metric_names("absent(up{job=\"w\"} == 1)") == {"up"}


def dashboard_exprs():
    """(where, expr) of every query of every dashboard, rows and variables too."""
    out = []

    def walk(panels, dash):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"{dash}: panel {p.get('title')!r}", t["expr"]))
            walk(p.get("panels", []), dash)

    for path in DASHBOARDS:
        d = json.load(open(path, encoding="utf-8"))
        name = os.path.basename(path)
        walk(d.get("panels", []), name)
        for v in d.get("templating", {}).get("list", []):
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if v.get("type") == "query" and q:
                m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", q)
                out.append((f"{name}: variable {v['name']}", m.group(1) if m else q))
    return out


def rule_exprs():
    import yaml
    doc = yaml.safe_load(open(RULES, encoding="utf-8"))
    return [(f"alerts.yml: {r.get('alert') or r.get('record')}", r["expr"])
            for g in doc["groups"] for r in g["rules"]]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def families(text):
    """({sample name}, {family: type}) of one /metrics text."""
    names, types = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, fam, typ = line.split()
            types[fam] = typ
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, line
            names.add(m.group(1))
    return names, types


@pytest.fixture(scope="module")
def exported():
    tmp = tempfile.mkdtemp(prefix="aiq-obs-redis-")
    subprocess.run(["bash", os.path.join(SERVICES, "redis.sh"), "start", tmp], check=True,
                   stdout=subprocess.DEVNULL)
    port = int(open(os.path.join(tmp, "port")).read())
    broker, backend = f"redis://127.0.0.1:{port}/5", f"redis://127.0.0.1:{port}/6"
    mport = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIQUEUE_", "CELERY_"))}
    log = open(os.path.join(tmp, "worker.log"), "w")
    worker = subprocess.Popen([WORKER, "-b", broker, "--backend", backend, "-Q", "obs-w", "-c",
                               "2", "-n", "obs@test", "--metrics-port", str(mport),
                               "--metrics-host", "127.0.0.1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    server = None
    app = None
    try:
        server = Server(SERVER, "--broker", broker, "--backend", backend, "--queue", "obs-s",
                        "-c", "1", "--log-level", "error")
        wurl = f"http://127.0.0.1:{mport}/metrics"
        deadline = time.monotonic() + 20
        while True:
            try:
                get(wurl)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline and worker.poll() is None, \
                    open(log.name).read()
                time.sleep(0.1)
        # The standalone worker: successes, a failure, an unregistered task.
        app = celeryapp.make_app(broker, backend)
        ok = [app.send_task("tasks.analyze_track", args=[f"t-{i}", "la la\nlove"], queue="obs-w")
              for i in range(3)]
        for r in ok:
            r.get(timeout=30)
        bad = app.send_task("tasks.analyze_track", args=[], queue="obs-w")
        with pytest.raises(Exception):
            bad.get(timeout=30)
        app.send_task("tasks.not_here", args=[], queue="obs-w")
        # The server and its embedded worker.
        for i in range(3):
            st, _, data = server.request("POST", "/analyze", {"track_id": f"s-{i}",
                                                              "text": "la la\nlove"})
            assert st == 202, data
            tid = json.loads(data)["task_id"]
            st, _, data = server.request("GET", f"/tasks/{tid}?wait=20")
            assert st == 200 and json.loads(data)["state"] == "SUCCESS", data
        deadline = time.monotonic() + 20
        while "aiqueue_worker_dead_letters_total 1" not in get(wurl):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        st, _, sdata = server.request("GET", "/metrics")
        assert st == 200
        yield {"worker": get(wurl), "server": sdata.decode()}
    finally:
        if app is not None:
            app.close()
        if server is not None:
            rc, err = server.stop()
            assert rc == 0, err
        worker.terminate()
        rc = worker.wait(timeout=30)
        log.close()
        subprocess.run(["bash", os.path.join(SERVICES, "redis.sh"), "stop", tmp],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert rc == 0, open(log.name).read()


def test_there_is_something_to_check():
    assert DASHBOARDS, "no dashboard under deploy/compose/grafana/dashboards"
    assert len(rule_exprs()) >= 5
    assert len(dashboard_exprs()) >= 10


@pytest.mark.parametrize("where,expr", dashboard_exprs() + rule_exprs())
def test_every_metric_used_is_exported(exported, where, expr):
    wnames, wtypes = families(exported["worker"])
    snames, stypes = families(exported["server"])
    names, types = wnames | snames, {**stypes, **wtypes}
    used = metric_names(expr)
    assert used, f"{where}: no metric in {expr!r}"
    for n in used - SYNTHETIC:
        assert n in names, f"{where}: {n} is exported by neither program ({expr!r})"
        fam = re.sub(r"_(bucket|sum|count)$", "", n)
        if n.endswith("_bucket"):
            assert types.get(fam) == "histogram", f"{where}: {n} is not a histogram's bucket"
        elif types.get(n) is None and types.get(fam) not in ("histogram", "summary"):
            pytest.fail(f"{where}: {n} has no # TYPE")
    if "histogram_quantile" in expr:
        assert any(n.endswith("_bucket") for n in used), f"{where}: quantile without buckets"
    for n in used:
        if re.search(rf"\b(rate|increase)\(\s*{re.escape(n)}\b", expr):
            fam = re.sub(r"_(bucket|sum|count)$", "", n)
            assert types.get(n) == "counter" or types.get(fam) in ("histogram", "summary"), \
                f"{where}: rate/increase over {n}, which is not a counter"


def test_dashboard_exprs_parse_as_promql(tmp_path):
    """Grafana's variables replaced, each expression as a recording rule."""
    rules = ["groups:", "  - name: dashboards", "    rules:"]
    for i, (_, expr) in enumerate(dashboard_exprs()):
        e = expr.replace("$__rate_interval", "5m").replace("$task", ".*")
        rules += [f"      - record: dashboard:expr{i}", f"        expr: {json.dumps(e)}"]
    f = tmp_path / "dashboard-rules.yml"
    f.write_text("\n".join(rules) + "\n")
    out = subprocess.run([PROMTOOL, "check", "rules", str(f)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboards_are_grafana_json():
    for path in DASHBOARDS:
        d = json.load(open(path, encoding="utf-8"))
        assert d.get("uid") and d.get("title") and d.get("panels"), path
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{path}: duplicate panel ids"
        for p in d["panels"]:
            assert p.get("datasource", {}).get("uid") == "prometheus", (path, p["title"])


def test_promtool_check_rules():
    out = subprocess.run([PROMTOOL, "check", "rules", RULES], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules():
    out = subprocess.run([PROMTOOL, "test", "rules", RULES_TEST], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_accepts_both_texts(exported):
    for who in ("worker", "server"):
        out = subprocess.run([PROMTOOL, "check", "metrics"], input=exported[who],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, who + ": " + out.stdout + out.stderr
