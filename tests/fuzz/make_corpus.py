#!/usr/bin/env python3
"""Write the fuzz seed corpora, one file per captured message, from
tests/data/*.json (real Celery/kombu traffic) plus a few hand-written
URLs, times and configuration values. Run from anywhere; rewrites
tests/fuzz/corpus/<target>/
(fuzz_llm/ holds hand-written chat completion bodies and is kept). Deterministic: same data, same files."""
import base64
import json
import pathlib
import re
import shutil
import struct

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE.parent / "data"
OUT = HERE / "corpus"


def amqp_value(v):
    if v is None:
        return b"V"
    if isinstance(v, bool):
        return b"t" + (b"\x01" if v else b"\x00")
    if isinstance(v, int):
        if -2**31 <= v < 2**31:
            return b"I" + struct.pack(">i", v)
        return b"l" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"d" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return b"S" + struct.pack(">I", len(b)) + b
    if isinstance(v, (list, tuple)):
        items = b"".join(amqp_value(x) for x in v)
        return b"A" + struct.pack(">I", len(items)) + items
    if isinstance(v, dict):
        return b"F" + amqp_table(v)
    raise TypeError(type(v))


def amqp_table(d):
    body = b""
    for k, v in d.items():
        kb = k.encode()
        body += bytes([len(kb)]) + kb + amqp_value(v)
    return struct.pack(">I", len(body)) + body


def pyrepr_to_json(text):
    # The captures keep AMQP headers as Python reprs; enough of a
    # translation for the seeds (None/True/False, quotes).
    t = re.sub(r"\bNone\b", "null", text)
    t = re.sub(r"\bTrue\b", "true", t)
    t = re.sub(r"\bFalse\b", "false", t)
    t = t.replace("'", '"')
    try:
        return json.loads(t)
    except ValueError:
        return None


def main():
    if OUT.exists():
        for d in OUT.iterdir():
            if d.name != "fuzz_llm":  # hand-written chat completions, kept
                shutil.rmtree(d)
    seeds = {}

    def add(target, name, data):
        if isinstance(data, str):
            data = data.encode()
        seeds.setdefault(target, {})[name] = data

    msgs = json.load(open(DATA / "celery_amqp_messages.json"))
    for group, entries in msgs.items():
        for i, m in enumerate(entries):
            name = f"{group}_{i}_{m.get('name', '')}"
            if "body_base64" in m:
                body = base64.b64decode(m["body_base64"])
            else:
                body = m["body"].encode()
            add("fuzz_decode", name + "_body", b"\x01" + body)
            add("fuzz_pyrepr", name, b"\x40" + body)
            add("fuzz_pyrepr", name + "_nolimit", b"\x00" + body)
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, list) and parsed and isinstance(parsed[0], list):
                for j, a in enumerate(parsed[0]):
                    if isinstance(a, str):
                        add("fuzz_lyrics", f"{name}_{j}", a)
            h = m.get("headers")
            hj = pyrepr_to_json(h) if isinstance(h, str) else h
            if isinstance(hj, dict):
                try:
                    add("fuzz_amqp_table", name, amqp_table(hj))
                except TypeError:
                    pass
                for key in ("eta", "expires"):
                    if isinstance(hj.get(key), str):
                        add("fuzz_iso8601", f"{name}_{key}", hj[key])

    for i, e in enumerate(json.load(open(DATA / "celery_redis_envelopes.json"))):
        name = f"{i}_{e['name']}"
        add("fuzz_envelope", name, e["envelope"])
        add("fuzz_decode", name + "_envelope", b"\x00" + e["envelope"].encode())

    for i, r in enumerate(json.load(open(DATA / "celery_result_metas.json"))):
        name = f"{i}_{r['backend']}_{r['name']}"
        add("fuzz_result_meta", name, r["raw"])
        add("fuzz_decode", name + "_meta", b"\x02" + r["raw"].encode())
        meta = json.loads(r["raw"])
        if isinstance(meta.get("date_done"), str):
            add("fuzz_iso8601", name, meta["date_done"])
        add("fuzz_pyrepr", name, b"\x20" + r["raw"].encode())

    for i, t in enumerate(["2026-11-29T01:20:20.706806+00:00", "2026-11-29T01:20:16",
                           "1970-01-01T00:00:00Z", "2026-02-28T23:59:59.5-0530",
                           "9999-12-31T23:59:59.999999+14:00", "2026-11-29 01:20:20"]):
        add("fuzz_iso8601", f"hand_{i}", t)

    urls = ["amqp://guest:guest@127.0.0.1:5672//", "redis://:s3cr%40t@[::1]:6379/0",
            "rediss://user:p@ss:w@rd@host/1?ssl_cert_reqs=required",
            "sentinel://:pw@h1:26379;sentinel://:pw@h2:26379?master_name=m",
            "postgresql://aiq:secret@localhost/aiq?sslmode=require",
            "redis://SECRET@host", "memory://", "redis://h/0?password=tok&x=1",
            "amqps://u:%zz@h:0/vh#frag"]
    for i, u in enumerate(urls):
        add("fuzz_url", f"hand_{i}", u)

    values = ["1", "0", "true", "off", "-1", "99999999999999999999", "celery",
              "a,b , c", "memory://", "redis://:pw@127.0.0.1:6379/0", "http://127.0.0.1:11434/v1",
              "0.7", "fast=model:m1,base_url:http://h/v1;slow=model:m2", "quorum", "  42 ",
              "line\nbreak"]
    for k in range(64):
        add("fuzz_config", f"key_{k}", bytes([k]) + values[k % len(values)].encode())

    add("fuzz_lyrics", "ru", "Я люблю этот рэп-куплет, он прекрасен!\nИ снова, и снова.")
    add("fuzz_lyrics", "params", '{"top_words": 3}\x01Love love love, baby, yeah yeah.')

    for target, files in seeds.items():
        d = OUT / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            (d / safe).write_bytes(data)
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
