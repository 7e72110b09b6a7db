#!/usr/bin/python3
"""Validate everything under deploy/ without a cluster.

No Kubernetes cluster can run where the tests run, so this checks what can be
checked offline: every YAML file parses; each overlay renders (`kubectl
kustomize` when kubectl is installed, else a small built-in renderer that
covers the features these kustomizations use); every object has the fields
its kind requires; selectors match labels; Services, probes and ServiceMonitors
name ports that exist; probes hit endpoints the server really serves; ports
agree with the programs' --listen; the command lines of the worker, server and
CLI are accepted by their --help; the HPA, KEDA and PDB targets exist; secret
keys are documented; the compose file and the ArgoCD Application are sound.

    deploy/validate_manifests.py [--worker-help FILE] [--server-help FILE]
                                 [--cli-help FILE]

Without the --*-help files the flags are read from the programs' sources.
Prints one line per overlay and "manifests: OK", or every problem and exits 1.
"""
import argparse
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import yaml

# AIQ_VALIDATE_ROOT: validate another copy of the repository (--self-test).
ROOT = os.environ.get("AIQ_VALIDATE_ROOT") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "deploy")
K8S = os.path.join(HERE, "k8s")
OVERLAYS = ["dev", "prod", "region-worker"]
problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


# ------------------------------------------------------------ programs' flags
def flags_from_help(text):
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def flags_from_source(path):
    # The usage text of examples/*/main.c lists every long option.
    try:
        return flags_from_help(open(path, encoding="utf-8").read())
    except OSError as e:
        problem(path, f"cannot read: {e}")
        return set()


def served_paths():
    """The paths of the server's route table, wherever in examples/server it lives."""
    d = os.path.join(ROOT, "examples/server")
    src = "".join(open(os.path.join(d, n), encoding="utf-8").read()
                  for n in sorted(os.listdir(d)) if n.endswith(".c"))
    return set(re.findall(r'\[ROUTE_[A-Z_]+\]\s*=\s*\{"(/[a-z0-9/._{}-]*)"', src))


# -------------------------------------------------------------- rendering
def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def deep_merge(base, patch):
    """Strategic merge, as far as these patches need it: maps merge, lists of
    maps with a name merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and patch
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, old in enumerate(out):
                if old["name"] == item["name"]:
                    out[i] = deep_merge(old, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def json_pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, parts[-1]


def apply_json6902(obj, ops, where):
    for op in ops:
        parent, key = json_pointer(obj, op["path"])
        if isinstance(parent, list):
            key = len(parent) if key == "-" else int(key)
        if op["op"] == "test":
            if parent[key] != op["value"]:
                raise ValueError(f"{where}: test {op['path']} failed")
        elif op["op"] == "replace":
            parent[key] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            if isinstance(parent, list):
                parent.insert(key, copy.deepcopy(op["value"]))
            else:
                parent[key] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[key]
        else:
            raise ValueError(f"{where}: unsupported op {op['op']}")


def matches(obj, kind=None, name=None):
    return (kind is None or obj.get("kind") == kind) and (
        name is None or obj.get("metadata", {}).get("name") == name)


def render_builtin(kdir):
    """A small kustomize: resources, components, namespace, images, replicas,
    patches (strategic merge with $patch: delete, or JSON 6902 with a target)."""
    k = load_yaml_docs(os.path.join(kdir, "kustomization.yaml"))[0]
    objs = []
    for r in k.get("resources", []):
        p = os.path.join(kdir, r)
        objs += render_builtin(p) if os.path.isdir(p) else load_yaml_docs(p)
    patches = list(k.get("patches", []))
    for c in k.get("components", []):
        cdir = os.path.join(kdir, c)
        ck = load_yaml_docs(os.path.join(cdir, "kustomization.yaml"))[0]
        for r in ck.get("resources", []):
            objs += load_yaml_docs(os.path.join(cdir, r))
        patches += [dict(p, _dir=cdir) for p in ck.get("patches", [])]
    for p in patches:
        pdir = p.get("_dir", kdir)
        if "path" in p:
            docs = load_yaml_docs(os.path.join(pdir, p["path"]))
        else:
            docs = [yaml.safe_load(p["patch"])]
        target = p.get("target")
        for doc in docs:
            if isinstance(doc, list):  # JSON 6902
                for o in objs:
                    if matches(o, target.get("kind"), target.get("name")):
                        apply_json6902(o, doc, p.get("path", "inline patch"))
                continue
            kind, name = doc["kind"], doc["metadata"]["name"]
            hit = [o for o in objs if matches(o, kind, name)]
            if not hit:
                raise ValueError(f"{kdir}: patch for missing {kind}/{name}")
            if doc.get("$patch") == "delete":
                objs = [o for o in objs if not matches(o, kind, name)]
            else:
                i = objs.index(hit[0])
                objs[i] = deep_merge(objs[i], doc)
    if "namespace" in k:
        for o in objs:
            if o["kind"] != "Namespace":
                o.setdefault("metadata", {})["namespace"] = k["namespace"]
    for r in k.get("replicas", []):
        for o in objs:
            if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] == r["name"]:
                o["spec"]["replicas"] = r["count"]
    for img in k.get("images", []):
        for o in objs:
            for c in pod_containers(o):
                ref = c.get("image", "")
                if ref.split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img.get('newTag', 'latest')}"
    return objs


def usable_kubectl():
    """kubectl, if its built-in kustomize knows components, `replicas:` and
    `patches:` (kubectl 1.21 and later, kustomize v4+). Debian 12's
    kubernetes-client is 1.20 (kustomize v2.0.3): too old, so the built-in
    renderer is used then, and the output says so."""
    if os.environ.get("AIQ_VALIDATE_BUILTIN"):
        return None, "built-in renderer (AIQ_VALIDATE_BUILTIN)"
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None, "built-in renderer (no kubectl)"
    try:
        r = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True,
                           text=True, timeout=30)
        v = json.loads(r.stdout)["clientVersion"]
        major, minor = int(v["major"]), int(re.match(r"\d+", v["minor"]).group(0))
    except (OSError, ValueError, KeyError, AttributeError, subprocess.SubprocessError):
        return None, "built-in renderer (kubectl's version unreadable)"
    if (major, minor) < (1, 21):
        return None, f"built-in renderer (kubectl {major}.{minor}'s kustomize is too old)"
    return kubectl, "kubectl kustomize"


KUBECTL = None


def render(overlay):
    global KUBECTL
    kdir = os.path.join(K8S, "overlays", overlay)
    if KUBECTL is None:
        KUBECTL = usable_kubectl()
    kubectl, how = KUBECTL
    if kubectl:
        r = subprocess.run([kubectl, "kustomize", kdir], capture_output=True, text=True)
        if r.returncode != 0:
            problem(f"overlays/{overlay}", "kubectl kustomize failed: " + r.stderr.strip()[-800:])
            return [], "kubectl kustomize"
        return [d for d in yaml.safe_load_all(r.stdout) if d], how
    try:
        return render_builtin(kdir), how
    except Exception as e:  # noqa: BLE001 - report any render error
        problem(f"overlays/{overlay}", f"render failed: {e}")
        return [], how


# ---------------------------------------------------------------- checks
REQUIRED = {
    "Deployment": ["spec.selector.matchLabels", "spec.template.metadata.labels",
                   "spec.template.spec.containers"],
    "StatefulSet": ["spec.selector.matchLabels", "spec.serviceName",
                    "spec.template.metadata.labels", "spec.template.spec.containers"],
    "Job": ["spec.template.spec.containers", "spec.template.spec.restartPolicy"],
    "Service": ["spec.selector", "spec.ports"],
    "Secret": [],
    "ConfigMap": ["data"],
    "Namespace": [],
    "ServiceAccount": [],
    "Role": ["rules"],
    "RoleBinding": ["roleRef.kind", "roleRef.name", "subjects"],
    "PodDisruptionBudget": ["spec.selector.matchLabels"],
    "HorizontalPodAutoscaler": ["spec.scaleTargetRef.kind", "spec.scaleTargetRef.name",
                                "spec.maxReplicas", "spec.metrics"],
    "NetworkPolicy": ["spec.podSelector", "spec.policyTypes"],
    "ServiceMonitor": ["spec.selector.matchLabels", "spec.endpoints"],
    "ScaledObject": ["spec.scaleTargetRef.name", "spec.triggers"],
    "TriggerAuthentication": ["spec.secretTargetRef"],
}
API_VERSIONS = {
    "Deployment": "apps/v1", "StatefulSet": "apps/v1", "Job": "batch/v1", "Service": "v1",
    "Secret": "v1", "ConfigMap": "v1", "Namespace": "v1", "ServiceAccount": "v1",
    "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
    "PodDisruptionBudget": "policy/v1", "HorizontalPodAutoscaler": "autoscaling/v2",
    "NetworkPolicy": "networking.k8s.io/v1", "ServiceMonitor": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1", "TriggerAuthentication": "keda.sh/v1alpha1",
}


def get(obj, dotted):
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def pod_spec(o):
    if o.get("kind") in ("Deployment", "StatefulSet", "Job"):
        return get(o, "spec.template.spec") or {}
    return None


def pod_containers(o):
    spec = pod_spec(o)
    if not spec:
        return []
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_command(where, cmd, program, known_flags):
    if not cmd or cmd[0] != program:
        problem(where, f"command should start with {program}: {cmd}")
        return
    args = cmd[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            if flag not in known_flags:
                problem(where, f"{program} does not know {flag} (its --help lists no such flag)")
        i += 1


def worker_time_limit(cmd):
    for i, a in enumerate(cmd):
        if a == "--time-limit" and i + 1 < len(cmd):
            return float(cmd[i + 1].rstrip("s"))
    return None


def check_objects(overlay, objs, helps, listen_port):
    where0 = f"overlays/{overlay}"
    names = {}
    for o in objs:
        kind, name = o.get("kind"), get(o, "metadata.name")
        where = f"{where0}: {kind}/{name}"
        if not o.get("apiVersion") or not kind or not name:
            problem(where, "apiVersion, kind and metadata.name are required")
            continue
        if API_VERSIONS.get(kind) and o["apiVersion"] != API_VERSIONS[kind]:
            problem(where, f"apiVersion {o['apiVersion']}, expected {API_VERSIONS[kind]}")
        if kind not in REQUIRED:
            problem(where, "kind not known to the validator")
        for field in REQUIRED.get(kind, []):
            if get(o, field) is None:
                problem(where, f"missing {field}")
        if (kind, name) in names:
            problem(where, "defined twice")
        names[(kind, name)] = o

    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job")]
    pod_labels = [get(o, "spec.template.metadata.labels") or {} for o in workloads]
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    configmaps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    used_secret_keys = set()

    for o in workloads:
        kind, name = o["kind"], o["metadata"]["name"]
        where = f"{where0}: {kind}/{name}"
        spec = pod_spec(o)
        sel = get(o, "spec.selector.matchLabels")
        labels = get(o, "spec.template.metadata.labels") or {}
        if kind != "Job" and not selects(sel, labels):
            problem(where, f"selector {sel} does not match the pod labels {labels}")
        if kind == "Job" and spec.get("restartPolicy") not in ("Never", "OnFailure"):
            problem(where, "a Job's restartPolicy must be Never or OnFailure")
        if kind == "StatefulSet":
            svc = services.get(o["spec"]["serviceName"])
            if svc is None:
                problem(where, f"serviceName {o['spec']['serviceName']} is not a Service here")
            vct = {get(v, "metadata.name") for v in o["spec"].get("volumeClaimTemplates", [])}
            if not vct:
                problem(where, "no volumeClaimTemplates (no PVC)")
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {get(v, "metadata.name") for v in get(o, "spec.volumeClaimTemplates") or []}
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                problem(where, f"volume {v['name']}: ConfigMap {v['configMap']['name']} missing")
            if "secret" in v:
                used_secret_keys |= {(v["secret"]["secretName"], i["key"])
                                     for i in v["secret"].get("items", [])}
        for c in pod_containers(o):
            cw = f"{where} container {c.get('name')}"
            if not c.get("name") or not c.get("image"):
                problem(cw, "name and image are required")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problem(cw, f"volumeMount {m['name']} has no volume")
            res = c.get("resources", {})
            if not get(res, "requests.memory") or not get(res, "limits.memory") or \
                    not get(res, "requests.cpu"):
                problem(cw, "resources need requests.cpu, requests.memory and limits.memory")
            for e in c.get("env", []):
                ref = get(e, "valueFrom.secretKeyRef")
                if ref:
                    used_secret_keys.add((ref["name"], ref["key"]))
            for e in c.get("envFrom", []):
                ref = e.get("configMapRef")
                if ref and ref["name"] not in configmaps:
                    problem(cw, f"envFrom ConfigMap {ref['name']} missing")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = c.get(probe_name)
                if not probe:
                    continue
                http = probe.get("httpGet") or probe.get("tcpSocket")
                if http:
                    port = http.get("port")
                    if isinstance(port, str) and port not in ports:
                        problem(cw, f"{probe_name} names port {port}, not a container port")
                if probe.get("exec") and not probe["exec"].get("command"):
                    problem(cw, f"{probe_name}: exec without a command")
            cmd = c.get("command") or []
            image = c.get("image", "")
            if "aiqueue" not in image.rsplit("/", 1)[-1].split(":")[0]:
                continue
            # The programs of the aiqueue image.
            if cmd and cmd[0] == "aiqueue-worker":
                check_command(cw, cmd, "aiqueue-worker", helps["worker"])
                limit = worker_time_limit(cmd)
                grace = spec.get("terminationGracePeriodSeconds", 30)
                if limit is None:
                    problem(cw, "the worker should run with --time-limit (bounds the drain)")
                elif grace <= limit:
                    problem(cw, f"terminationGracePeriodSeconds {grace} <= --time-limit "
                                f"{limit}: the drain would be cut short")
                pre = get(c, "lifecycle.preStop.exec.command")
                if not pre or "kill -TERM 1" not in " ".join(pre):
                    problem(cw, "the worker needs a preStop that starts the drain (kill -TERM 1)")
            elif cmd and cmd[0] == "aiqueue-server":
                check_command(cw, cmd, "aiqueue-server", helps["server"])
                paths = served_paths()
                live = get(c, "livenessProbe.httpGet.path")
                ready = get(c, "readinessProbe.httpGet.path")
                if live != "/healthz" or ready != "/readyz":
                    problem(cw, f"liveness must be /healthz and readiness /readyz, not {live}, {ready}")
                for pth in (live, ready, get(c, "startupProbe.httpGet.path")):
                    if pth and pth not in paths:
                        problem(cw, f"probe path {pth} is not served (routes: {sorted(paths)})")
                if ports.get("http") != listen_port:
                    problem(cw, f"container port {ports.get('http')} != the --listen port {listen_port}")
            elif cmd and cmd[0] == "aiqueue":
                check_command(cw, cmd, "aiqueue", helps["cli"])
            elif cmd:
                problem(cw, f"unknown program {cmd[0]}")

    for name, svc in services.items():
        where = f"{where0}: Service/{name}"
        sel = svc["spec"].get("selector", {})
        backing = [o for o, lab in zip(workloads, pod_labels) if selects(sel, lab)]
        if not backing:
            problem(where, f"selector {sel} matches no pod template")
            continue
        cports = {p.get("name"): p["containerPort"]
                  for o in backing for c in pod_containers(o) for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str) and tp not in cports:
                problem(where, f"targetPort {tp} is not a port of the selected pods")
            if isinstance(tp, int) and tp not in cports.values():
                problem(where, f"targetPort {tp} is not a port of the selected pods")

    for o in objs:
        kind, name = o["kind"], o["metadata"]["name"]
        where = f"{where0}: {kind}/{name}"
        if kind == "PodDisruptionBudget":
            if not any(selects(o["spec"]["selector"]["matchLabels"], lab) for lab in pod_labels):
                problem(where, "selector matches no pod template")
        if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = o["spec"]["scaleTargetRef"]
            if ("Deployment", ref["name"]) not in names or ref.get("kind", "Deployment") != "Deployment":
                problem(where, f"scale target Deployment/{ref['name']} does not exist")
            lo = o["spec"].get("minReplicas", o["spec"].get("minReplicaCount", 1))
            hi = o["spec"].get("maxReplicas", o["spec"].get("maxReplicaCount"))
            if hi is None or lo > hi:
                problem(where, f"bad replica range {lo}-{hi}")
        if kind == "ScaledObject":
            for t in o["spec"]["triggers"]:
                auth = get(t, "authenticationRef.name")
                if auth and ("TriggerAuthentication", auth) not in names:
                    problem(where, f"TriggerAuthentication {auth} missing")
                if t["type"] == "rabbitmq" and get(t, "metadata.queueName") != "celery":
                    problem(where, "the rabbitmq trigger should watch the queue the workers consume")
        if kind == "TriggerAuthentication":
            for ref in o["spec"]["secretTargetRef"]:
                used_secret_keys.add((ref["name"], ref["key"]))
        if kind == "NetworkPolicy":
            psel = get(o, "spec.podSelector.matchLabels")
            if psel and not any(selects(psel, lab) for lab in pod_labels):
                problem(where, f"podSelector {psel} matches no pod template")
            for rule in get(o, "spec.ingress") or []:
                for src in rule.get("from", []):
                    s = get(src, "podSelector.matchLabels")
                    if s and not any(selects(s, lab) for lab in pod_labels):
                        problem(where, f"from podSelector {s} matches no pod template")
        if kind == "ServiceMonitor":
            sel = o["spec"]["selector"]["matchLabels"]
            hit = [s for s in services.values() if selects(sel, s["metadata"].get("labels", {}))]
            if not hit:
                problem(where, f"selector {sel} matches no Service")
            for ep in o["spec"]["endpoints"]:
                if not any(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in hit):
                    problem(where, f"endpoint port {ep.get('port')} is no port of the selected Services")
                if o["metadata"]["name"] == "aiqueue-server" and ep.get("path") not in served_paths():
                    problem(where, f"path {ep.get('path')} is not served")
        if kind == "RoleBinding":
            if ("Role", o["roleRef"]["name"]) not in names:
                problem(where, f"Role {o['roleRef']['name']} missing")
            for s in o["subjects"]:
                if s["kind"] == "ServiceAccount" and ("ServiceAccount", s["name"]) not in names:
                    problem(where, f"ServiceAccount {s['name']} missing")

    # Secret keys: present when the Secret is rendered; documented otherwise
    # (created out of band in prod).
    docs = open(os.path.join(ROOT, "docs/deploy.md"), encoding="utf-8").read() \
        if os.path.exists(os.path.join(ROOT, "docs/deploy.md")) else ""
    for sname, key in sorted(used_secret_keys):
        if sname in secrets:
            sec = secrets[sname]
            if key not in (sec.get("stringData") or {}) and key not in (sec.get("data") or {}):
                problem(f"{where0}: Secret/{sname}", f"key {key} is used but not defined")
        elif f"`{key}`" not in docs:
            problem(f"{where0}: Secret/{sname}", f"key {key} is created out of band but "
                                                  "docs/deploy.md does not list it")
    return names


def check_overlay_specifics(overlay, names):
    w = f"overlays/{overlay}"
    # The programs' image is the one the overlay names, in every pod.
    k = load_yaml_docs(os.path.join(K8S, "overlays", overlay, "kustomization.yaml"))[0]
    want = [f"{i.get('newName', i['name'])}:{i['newTag']}" for i in k.get("images", [])
            if i["name"] == "aiqueue"]
    if len(want) != 1:
        problem(w, "the overlay must set the aiqueue image (images: name: aiqueue, newTag)")
    else:
        for (kind, name), o in names.items():
            for c in pod_containers(o):
                cmd = c.get("command") or [""]
                if cmd[0].startswith("aiqueue") and c.get("image") != want[0]:
                    problem(w, f"{kind}/{name} runs {c.get('image')}, not {want[0]}")
    dep = names.get(("Deployment", "aiqueue-worker"))
    if dep is None:
        problem(w, "no aiqueue-worker Deployment")
        return
    if overlay == "prod":
        if dep["spec"]["replicas"] != 3:
            problem(w, "the prod worker Deployment should have 3 replicas")
        so = names.get(("ScaledObject", "aiqueue-worker"))
        if not so or (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) != (3, 10):
            problem(w, "prod needs the KEDA ScaledObject on 3-10 workers")
        if ("HorizontalPodAutoscaler", "aiqueue-worker") in names:
            problem(w, "an HPA and a ScaledObject on the same Deployment fight")
        if ("Secret", "aiqueue-secrets") in names:
            problem(w, "placeholder Secret must not reach prod")
        if names.get(("StatefulSet", "rabbitmq"), {}).get("spec", {}).get("replicas") != 3:
            problem(w, "prod RabbitMQ should run 3 nodes (quorum queues)")
    if overlay in ("dev", "prod"):
        for n in ("aiqueue-server", "aiqueue-worker"):
            if ("Deployment", n) not in names:
                problem(w, f"Deployment {n} missing")
        for n in ("rabbitmq", "redis", "postgres"):
            if ("StatefulSet", n) not in names:
                problem(w, f"StatefulSet {n} missing")
        if ("Job", "aiqueue-migrate") not in names:
            problem(w, "migration Job missing")


def base_checks():
    hpa = [o for o in load_yaml_docs(os.path.join(K8S, "base/autoscaling.yaml"))
           if o["kind"] == "HorizontalPodAutoscaler"]
    if not hpa or (hpa[0]["spec"]["minReplicas"], hpa[0]["spec"]["maxReplicas"]) != (3, 10):
        problem("base/autoscaling.yaml", "the worker HPA should scale 3-10 on CPU")
    cm = load_yaml_docs(os.path.join(K8S, "base/configmap.yaml"))[0]
    listen = cm["data"].get("AIQUEUE_LISTEN", "")
    if cm["data"].get("AIQUEUE_AMQP_QUEUE_TYPE") != "quorum":
        problem("base/configmap.yaml", "workers should declare quorum queues")
    m = re.fullmatch(r"(?:.*):(\d+)", listen)
    if not m:
        problem("base/configmap.yaml", f"AIQUEUE_LISTEN {listen!r} is not HOST:PORT")
        return None
    port = int(m.group(1))
    df = open(os.path.join(HERE, "Dockerfile"), encoding="utf-8").read()
    if f"EXPOSE {port}" not in df or f"AIQUEUE_LISTEN=0.0.0.0:{port}" not in df:
        problem("deploy/Dockerfile", f"EXPOSE and AIQUEUE_LISTEN should use port {port}")
    rmq = open(os.path.join(K8S, "base/rabbitmq.yaml"), encoding="utf-8").read()
    if "RABBITMQ_DEFAULT_USER" not in rmq or "loopback_users.guest = true" not in rmq:
        problem("base/rabbitmq.yaml", "RabbitMQ must get its own user and keep guest on loopback")
    return port


def check_compose(helps):
    path = os.path.join(HERE, "docker-compose.yml")
    c = load_yaml_docs(path)[0]
    s = c.get("services", {})
    for need in ("rabbitmq", "redis", "postgres", "migrate", "aiqueue-server",
                 "aiqueue-worker-1", "aiqueue-worker-2", "prometheus", "grafana"):
        if need not in s:
            problem("docker-compose.yml", f"service {need} missing")
    for name in ("rabbitmq", "redis", "postgres"):
        if "healthcheck" not in s.get(name, {}):
            problem("docker-compose.yml", f"{name} has no healthcheck")
    for name in ("aiqueue-server", "aiqueue-worker-1", "aiqueue-worker-2"):
        dep = s.get(name, {}).get("depends_on", {})
        if not isinstance(dep, dict) or any(
                dep.get(d, {}).get("condition") != "service_healthy"
                for d in ("rabbitmq", "redis", "postgres")):
            problem("docker-compose.yml", f"{name} must wait for healthy datastores")
        cmd = s.get(name, {}).get("command", [])
        prog = cmd[0] if cmd else ""
        check_command(f"docker-compose.yml {name}", cmd, prog,
                      helps["worker" if prog == "aiqueue-worker" else "server"])
    check_command("docker-compose.yml migrate", s["migrate"]["command"], "aiqueue", helps["cli"])
    text = open(path, encoding="utf-8").read()
    if re.search(r"guest", text.replace("instead of guest", "").replace("guest account", "")):
        problem("docker-compose.yml", "mentions the guest account")
    # Every variable the file requires is in the example env file.
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    example = open(os.path.join(HERE, ".env.example"), encoding="utf-8").read()
    for v in sorted(required):
        if not re.search(rf"^{v}=", example, re.M):
            problem(".env.example", f"{v} (required by docker-compose.yml) missing")
    prom = load_yaml_docs(os.path.join(HERE, "compose/prometheus.yml"))[0]
    targets = [t for sc in prom["scrape_configs"] for st in sc["static_configs"] for t in st["targets"]]
    if "aiqueue-server:8000" not in targets:
        problem("compose/prometheus.yml", "does not scrape aiqueue-server:8000")
    for dash in glob.glob(os.path.join(HERE, "compose/grafana/dashboards/*.json")):
        json.load(open(dash, encoding="utf-8"))


def check_argocd():
    for path in glob.glob(os.path.join(HERE, "argocd/*.yaml")):
        for o in load_yaml_docs(path):
            if o["kind"] != "Application":
                continue
            where = f"argocd/{os.path.basename(path)}: Application/{o['metadata']['name']}"
            src = get(o, "spec.source") or {}
            p = src.get("path", "")
            if not os.path.isfile(os.path.join(ROOT, p, "kustomization.yaml")):
                problem(where, f"path {p!r} has no kustomization.yaml in this repository")
            auto = get(o, "spec.syncPolicy.automated") or {}
            if not (auto.get("prune") and auto.get("selfHeal")):
                problem(where, "automated sync needs prune and selfHeal")
            for f in ("spec.destination.namespace", "spec.project", "spec.source.repoURL",
                      "spec.source.targetRevision"):
                if not get(o, f):
                    problem(where, f"missing {f}")


# --self-test: each mistake below, made in a copy of deploy/, must make the
# validation fail with the given message; so the checks cannot rot into
# checking nothing.
MUTATIONS = [
    ("k8s/base/server.yaml", "path: /readyz, port", "path: /ready, port",
     "liveness must be /healthz and readiness /readyz"),
    ("k8s/base/server.yaml", "path: /healthz, port: http}\n            periodSeconds: 10",
     "path: /livez, port: http}\n            periodSeconds: 10", "liveness must be /healthz"),
    ("k8s/base/worker.yaml", "- --concurrency", "- --concurency", "does not know --concurency"),
    ("docker-compose.yml", '"--queues", "celery"', '"--queue-list", "celery"',
     "does not know --queue-list"),
    ("k8s/base/autoscaling.yaml", "    name: aiqueue-worker\n  minReplicas",
     "    name: aiqueue-workers\n  minReplicas", "scale target Deployment/aiqueue-workers"),
    ("k8s/components/keda/scaledobject.yaml", "    kind: Deployment\n    name: aiqueue-worker",
     "    kind: Deployment\n    name: worker", "scale target Deployment/worker"),
    ("k8s/base/worker.yaml", "terminationGracePeriodSeconds: 330",
     "terminationGracePeriodSeconds: 200", "the drain would be cut short"),
    ("k8s/base/worker.yaml", "kill -TERM 1;", "true;", "preStop that starts the drain"),
    ("k8s/base/server.yaml", "      targetPort: http", "      targetPort: web",
     "targetPort web is not a port"),
    ("k8s/base/autoscaling.yaml", "    matchLabels:\n      app.kubernetes.io/name: aiqueue-worker",
     "    matchLabels:\n      app.kubernetes.io/name: aiqueue-wrk", "selector matches no pod template"),
    ("k8s/base/configmap.yaml", 'AIQUEUE_LISTEN: ":8000"', 'AIQUEUE_LISTEN: ":8080"',
     "!= the --listen port 8080"),
    ("argocd/application.yaml", "path: deploy/k8s/overlays/prod",
     "path: deploy/k8s/overlays/production", "has no kustomization.yaml"),
    ("k8s/overlays/prod/kustomization.yaml", "  - path: delete-placeholder-secret.yaml\n", "",
     "placeholder Secret must not reach prod"),
    ("k8s/base/secret.yaml", "  redis-password: change-me-redis\n", "",
     "key redis-password is used but not defined"),
    ("k8s/base/redis.yaml", "  serviceName: redis", "  serviceName: redis-headless",
     "serviceName redis-headless is not a Service"),
    ("k8s/base/networkpolicies.yaml", "app.kubernetes.io/component: migrate",
     "app.kubernetes.io/component: migrations", "matches no pod template"),
    ("k8s/base/kustomization.yaml", "# The programs' image",
     "images:\n  - name: aiqueue\n    newName: registry.example.com/aiqueue\n# The programs' image",
     "not aiqueue:dev"),
    ("k8s/base/postgres.yaml", "kind: StatefulSet\n", "kind: StatefulSet\n  bad: [\n",
     "does not parse"),
]


def self_test():
    import tempfile
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for d in ("examples", "docs"):
            os.symlink(os.path.join(ROOT, d), os.path.join(tmp, d))
        for f, old, new, expect in MUTATIONS:
            shutil.rmtree(os.path.join(tmp, "deploy"), ignore_errors=True)
            shutil.copytree(HERE, os.path.join(tmp, "deploy"), symlinks=True)
            path = os.path.join(tmp, "deploy", f)
            text = open(path, encoding="utf-8").read()
            if old not in text:
                print(f"SELF-TEST: {f}: text to change not found: {old!r}")
                failures += 1
                continue
            open(path, "w", encoding="utf-8").write(text.replace(old, new, 1))
            r = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True,
                               text=True, env=dict(os.environ, AIQ_VALIDATE_ROOT=tmp,
                                                            AIQ_VALIDATE_BUILTIN="1"))
            if r.returncode == 0 or expect not in r.stdout:
                print(f"SELF-TEST: {f}: {old!r} -> {new!r} not caught (wanted {expect!r})")
                print(r.stdout[-1500:])
                failures += 1
    print(f"self-test: {len(MUTATIONS) - failures} of {len(MUTATIONS)} mistakes caught")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--self-test", action="store_true",
                    help="check that the validation catches a list of mistakes")
    ap.add_argument("--worker-help")
    ap.add_argument("--server-help")
    ap.add_argument("--cli-help")
    a = ap.parse_args()
    if a.self_test:
        return self_test()

    def helpset(file, src):
        if file:
            return flags_from_help(open(file, encoding="utf-8").read())
        return flags_from_source(os.path.join(ROOT, src))
    helps = {"worker": helpset(a.worker_help, "examples/worker/main.c"),
             "server": helpset(a.server_help, "examples/server/main.c"),
             "cli": helpset(a.cli_help, "examples/cli/main.c")}
    for k, v in helps.items():
        if "--help" not in v:
            problem(f"{k} --help", "no flags found in the help text")

    n = 0
    for path in sorted(glob.glob(os.path.join(HERE, "**/*.y*ml"), recursive=True) +
                       glob.glob(os.path.join(HERE, "**/.*.y*ml"), recursive=True)):
        try:
            load_yaml_docs(path)
            n += 1
        except yaml.YAMLError as e:
            problem(os.path.relpath(path, ROOT), f"does not parse: {e}")
    print(f"{n} YAML files parse")
    listen_port = base_checks()
    for overlay in OVERLAYS:
        objs, how = render(overlay)
        if not objs:
            continue
        if how == "kubectl kustomize":
            # Keep the fallback renderer honest: it must agree with kubectl on
            # which objects an overlay makes.
            try:
                mine = render_builtin(os.path.join(K8S, "overlays", overlay))
                ids = lambda os_: sorted((o["kind"], o["metadata"]["name"],
                                          o["metadata"].get("namespace", "")) for o in os_)
                if ids(mine) != ids(objs):
                    problem(f"overlays/{overlay}", "built-in renderer and kubectl disagree: "
                            f"{set(ids(mine)) ^ set(ids(objs))}")
            except Exception as e:  # noqa: BLE001
                problem(f"overlays/{overlay}", f"built-in renderer failed: {e}")
        names = check_objects(overlay, objs, helps, listen_port)
        check_overlay_specifics(overlay, names)
        print(f"overlays/{overlay}: {len(objs)} objects rendered by {how}")
    check_compose(helps)
    check_argocd()
    if problems:
        for p in problems:
            print("PROBLEM:", p)
        print(f"manifests: {len(problems)} problems")
        return 1
    print("manifests: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
