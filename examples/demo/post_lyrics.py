#!/usr/bin/python3
"""Send lyrics files to a running aiqueue-server and print the analyses.

    post_lyrics.py BASE_URL FILE...

POST /analyze for every file (answered at once with 202 and a task id), then
GET /tasks/{id}?wait=30 for each result. Standard library only.

When the server refuses a request (e.g. 503 because the broker is down or its
URL scheme is not built into the library), the status and the server's
"detail" are printed and the script exits with status 1.
"""
import json
import os
import sys
import urllib.error
import urllib.request


class ServerError(Exception):
    """The server answered an error status, or could not be reached."""

    def __init__(self, what, status, detail):
        super().__init__("%s -> %s %s" % (what, status, detail))
        self.what, self.status, self.detail = what, status, detail


def error_detail(raw):
    """The server's reason from an error body ({"detail": ...}), else the text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text or "(no body)"
    if isinstance(body, dict) and body.get("detail") is not None:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)
    return text


def call(method, url, body=None):
    what = "%s %s" % (method, url)
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raise ServerError(what, "%d %s" % (e.code, e.reason), error_detail(e.read())) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(what, "unreachable", str(reason)) from None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise ServerError(what, status, "the answer is not JSON: %r" % raw[:200]) from None


def main():
    try:
        return run()
    except ServerError as e:
        print("error: %s: %s" % (e.what, e.status), file=sys.stderr)
        print("       %s" % e.detail, file=sys.stderr)
        return 1


def run():
    if len(sys.argv) < 3:
        sys.exit("usage: post_lyrics.py BASE_URL FILE...")
    base, files = sys.argv[1].rstrip("/"), sys.argv[2:]
    queued = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        track = os.path.splitext(os.path.basename(path))[0]
        status, body = call("POST", base + "/analyze", {"track_id": track, "text": text})
        print(f"POST /analyze {track:<20} -> {status} {body['status']} {body['task_id']}")
        queued.append((track, body["task_id"]))

    failures = 0
    for track, task_id in queued:
        _, task = call("GET", f"{base}/tasks/{task_id}?wait=30")
        if task["state"] != "SUCCESS":
            failures += 1
            print(f"== {track}: {task['state']} {task.get('error')}")
            continue
        a = task["result"]["analysis"]
        rhyme, sent = a["rhyme"], a["sentiment"]
        print(f"== {track} ({a['language']})")
        print(f"   {a['line_count']} lines, {a['word_count']} words, "
              f"{a['unique_word_count']} unique (diversity {a['lexical_diversity']:.2f}), "
              f"{a['avg_syllables_per_word']:.2f} syllables/word")
        print(f"   rhyme schemes {' '.join(rhyme['rhyme_scheme'])}, "
              f"density {rhyme['rhyme_density']:.2f}; sentiment {sent['label']} "
              f"({sent['score']:+.2f})")
        hooks = "; ".join(f"\"{h['line']}\" x{h['count']}" for h in a["hooks"][:2])
        if hooks:
            print(f"   hooks: {hooks}")
        print("   top words: " + ", ".join(f"{w['word']}({w['count']})"
                                          for w in a["top_words"][:6]))
        print(f"   rhymes by {a['phonetics']}: {rhyme['perfect_pairs']} perfect, "
              f"{rhyme['slant_pairs']} slant, {rhyme['multis']} multis, "
              f"{rhyme['internal_rhymes']} internal; flow {a['flow']['mean']:.1f} "
              f"syllables/line (variance {a['flow']['variance']:.1f}); stems: {a['stemming']}")
    print_similar(base, [track for track, _ in queued])
    return 1 if failures else 0


def print_similar(base, tracks):
    """The nearest tracks by embedding, where the store is PostgreSQL."""
    for track in tracks:
        try:
            _, body = call("GET", f"{base}/tracks/{track}/similar?k=2")
        except ServerError as e:
            if str(e.status).startswith("501"):  # memory:// or Redis: no similarity search
                print("(similar tracks: the store must be PostgreSQL, as with "
                      "scripts/demo.sh --services)")
                return
            if str(e.status).startswith("404"):  # its embedding is not stored (yet)
                print(f"~~ {track}: no embedding stored")
                continue
            raise
        near = ", ".join(f"{s['track_id']} ({s['score']:.2f})" for s in body["similar"])
        print(f"~~ {track} is nearest to {near}")


if __name__ == "__main__":
    sys.exit(main())
