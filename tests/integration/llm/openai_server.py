#!/usr/bin/python3
"""A small OpenAI-compatible chat-completions server for the llm analyzer tests.

It checks every request the way a real server would see it (method, path,
headers, JSON body, model, messages, response_format) and answers per
scenario, chosen by the model name:

  ok*             a completion whose content is a JSON object
  fenced          the JSON object wrapped in a Markdown code fence
  plain-ok        like ok, but the request must NOT carry response_format
  preset-qwen     like ok, the request must carry temperature 0.7
  ratelimit-once  429 with Retry-After: 1 (seconds), then ok
  ratelimit-date  429 with Retry-After as an HTTP date, then ok
  error500-once   500, then ok
  error500        500 every time
  slow-once       answers after 2.5 s the first time, then ok
  slow            answers after 5 s every time
  drop-once       closes the connection without answering, then ok
  notjson         content that is prose, not JSON
  array           content that is a JSON array
  unauthorized    401, echoing the key it got (as some servers do)
  missing         404 "model not found"
  huge            a 64 KiB answer

POST /v1/embeddings answers {"data": [{"embedding": …}]} per model:

  embed-ok            the 8 numbers embedding_of(input) (below)
  embed-ratelimit-once  429 with Retry-After: 1, then like embed-ok
  embed-error500      500 every time
  embed-malformed     200 with a body that is not JSON
  embed-wrongsize     200 with 5 numbers
  embed-unauthorized  401

"First time" is counted per (model, user message), so each test case uses
its own lyrics. A request that fails a check gets HTTP 400 with the reason,
which the analyzer stores as a failure the test prints.

Every request is logged to LOG as one line: "<model> <attempt> <status>".

usage: openai_server.py PORT_FILE LOG API_KEY
Binds 127.0.0.1 on a free port and writes the port to PORT_FILE.
"""
import email.utils
import http.server
import json
import os
import socket
import sys
import threading
import time

PORT_FILE, LOG, API_KEY = sys.argv[1], sys.argv[2], sys.argv[3]
attempts = {}
lock = threading.Lock()

ANALYSIS = {"language": "en", "themes": ["rain", "leaving"], "mood": "wistful",
            "sentiment": -0.4, "summary": "Someone leaves on a rainy night.",
            "explicit": False}


def completion(model, content):
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    }


def embedding_of(text):
    """8 numbers the C test recomputes: (i + 1) * (1 + len(text) % 3)."""
    return [(i + 1) * (1 + len(text.encode()) % 3) for i in range(8)]


def check_embeddings(handler, req):
    if handler.headers.get("Authorization") != "Bearer " + API_KEY:
        return "Authorization header is %r" % handler.headers.get("Authorization")
    if not isinstance(req.get("model"), str) or not req["model"]:
        return "model is missing"
    if not isinstance(req.get("input"), str):
        return "input is not a string"
    return None


def check(handler, req):
    """Return None when the request is what the analyzer must send, else why not."""
    if handler.path != "/v1/chat/completions":
        return "path is %r" % handler.path
    if not handler.headers.get("Content-Type", "").startswith("application/json"):
        return "Content-Type is %r" % handler.headers.get("Content-Type")
    model = req.get("model")
    if model != "unauthorized" and handler.headers.get("Authorization") != "Bearer " + API_KEY:
        return "Authorization header is missing or wrong"
    if not isinstance(model, str) or not model:
        return "model is missing"
    msgs = req.get("messages")
    if (not isinstance(msgs, list) or len(msgs) != 2 or msgs[0].get("role") != "system"
            or msgs[1].get("role") != "user"):
        return "messages must be [system, user]"
    if not all(isinstance(m.get("content"), str) and m["content"] for m in msgs):
        return "message contents must be non-empty strings"
    user = msgs[1]["content"]
    if "{{lyrics}}" in user or "la la" not in user:
        return "the user message does not hold the lyrics: %r" % user[:80]
    if not isinstance(req.get("max_tokens"), int) or req["max_tokens"] < 1:
        return "max_tokens is missing"
    temp = req.get("temperature")
    if not isinstance(temp, (int, float)) or not 0 <= temp <= 2:
        return "temperature is %r" % (temp,)
    if model == "preset-qwen" and abs(temp - 0.7) > 1e-9:
        return "preset temperature is %r, expected 0.7" % (temp,)
    if model == "plain-ok":
        if "response_format" in req:
            return "response_format sent although llm.json_mode is off"
    elif req.get("response_format") != {"type": "json_object"}:
        return "response_format is %r" % (req.get("response_format"),)
    if req.get("stream") not in (None, False):
        return "stream must be off"
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, obj, headers=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeouts)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            req = json.loads(raw)
        except ValueError:
            return self.reply(400, {"error": {"message": "body is not JSON"}})
        if self.path == "/v1/embeddings" and isinstance(req, dict):
            return self.embeddings(req)
        model = req.get("model") if isinstance(req, dict) else None
        why = check(self, req) if isinstance(req, dict) else "body is not an object"
        key = (model, json.dumps(req.get("messages")) if isinstance(req, dict) else "")
        with lock:
            attempts[key] = attempts.get(key, 0) + 1
            n = attempts[key]
        status, body, headers, delay = self.plan(model, n, why)
        # Logged before answering: the test reads the log once it has its result.
        with lock, open(LOG, "a") as f:
            f.write("%s %d %s\n" % (model, n, status))
        if delay:
            time.sleep(delay)
        if status == 0:  # drop the connection without a word
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.reply(status, body, headers)

    def embeddings(self, req):
        model = req.get("model")
        why = check_embeddings(self, req)
        key = (model, json.dumps(req.get("input")))
        with lock:
            attempts[key] = attempts.get(key, 0) + 1
            n = attempts[key]
        headers = ()
        if why:
            status, body = 400, {"error": {"message": "request check failed: " + why}}
        elif model == "embed-ratelimit-once" and n == 1:
            status, body = 429, {"error": {"message": "rate limited"}}
            headers = [("Retry-After", "1")]
        elif model == "embed-error500":
            status, body = 500, {"error": {"message": "embedding model crashed"}}
        elif model == "embed-unauthorized":
            status, body = 401, {"error": {"message": "Incorrect API key provided"}}
        elif model == "embed-wrongsize":
            status, body = 200, {"data": [{"embedding": [1, 2, 3, 4, 5], "index": 0}]}
        else:
            vec = embedding_of(req["input"])
            status, body = 200, {"object": "list", "model": model,
                                 "data": [{"object": "embedding", "index": 0, "embedding": vec}]}
        with lock, open(LOG, "a") as f:
            f.write("%s %d %s\n" % (model, n, status))
        if model == "embed-malformed" and not why:
            raw = b'{"data": [{"embedding": [0.1, 0.2'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            return
        self.reply(status, body, headers)

    def plan(self, model, n, why):
        """(status, body, headers, delay) for this request; status 0 drops it."""
        if why:
            return 400, {"error": {"message": "request check failed: " + why}}, (), 0
        content = json.dumps(ANALYSIS)
        if model == "ratelimit-once" and n == 1:
            return 429, {"error": {"message": "rate limited"}}, [("Retry-After", "1")], 0
        if model == "ratelimit-date" and n == 1:
            when = email.utils.formatdate(time.time() + 2, usegmt=True)
            return 429, {"error": {"message": "rate limited"}}, [("Retry-After", when)], 0
        if model == "error500" or (model == "error500-once" and n == 1):
            return 500, {"error": {"message": "model crashed"}}, (), 0
        if model == "slow" or (model == "slow-once" and n == 1):
            return 200, completion(model, content), (), 5 if model == "slow" else 2.5
        if model == "drop-once" and n == 1:
            return 0, None, (), 0
        if model == "unauthorized":
            got = self.headers.get("Authorization", "")
            return 401, {"error": {"message": "Incorrect API key provided: " + got}}, (), 0
        if model == "missing":
            return 404, {"error": {"message": "model 'missing' not found, try pulling it first"}}, (), 0
        if model == "notjson":
            content = "Sure! This is a sad song about rain and leaving home."
        elif model == "array":
            content = "[\"rain\", \"leaving\"]"
        elif model == "fenced":
            content = "```json\n" + json.dumps(ANALYSIS) + "\n```"
        elif model == "huge":
            content = json.dumps({"padding": "x" * 65536})
        return 200, completion(model, content), (), 0

    def do_GET(self):
        self.reply(404, {"error": {"message": "only POST /v1/chat/completions here"}})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients that time out or abort close their end: not an error here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    tmp = PORT_FILE + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, PORT_FILE)
    srv.serve_forever()


if __name__ == "__main__":
    main()
