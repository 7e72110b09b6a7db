// aiqueue-server's dashboard: one snapshot at a time from /dashboard/stream
// (Server-Sent Events), actions through the server's JSON routes. Every
// value reaches the page through textContent or an attribute, never as
// markup. The API token (when the server has one) stays in this tab's
// sessionStorage and goes out as "Authorization: Bearer" (as ?access_token=
// for the stream: EventSource cannot set headers).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("aiqueue.token") || "";
  let source = null;
  let selected = null; // task id shown in the detail panel
  let last = null; // the latest snapshot

  function say(text) {
    $("message").textContent = text || "";
  }

  function headers(json) {
    const h = {};
    if (token) h.Authorization = "Bearer " + token;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function api(method, path, body) {
    const r = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
    let data = null;
    try {
      data = await r.json();
    } catch (e) {
      data = null;
    }
    if (!r.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : r.statusText;
      throw new Error(method + " " + path + ": " + r.status + " " + detail);
    }
    return data;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function seconds(ms) {
    return typeof ms === "number" ? (ms / 1000).toFixed(1) + " s" : "";
  }

  function short(v, n) {
    const s = typeof v === "string" ? v : JSON.stringify(v);
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  // Rows keyed by id: cells are updated in place so that a button under the
  // pointer is not replaced twice a second.
  function sync(table, items, key, build, update) {
    const body = table.tBodies[0];
    const rows = new Map();
    for (const tr of Array.from(body.rows)) rows.set(tr.dataset.key, tr);
    const keep = new Set();
    let prev = null;
    for (const item of items) {
      const k = String(key(item));
      keep.add(k);
      let tr = rows.get(k);
      if (!tr) {
        tr = build(item);
        tr.dataset.key = k;
      }
      update(tr, item);
      const next = prev ? prev.nextSibling : body.firstChild;
      if (next !== tr) body.insertBefore(tr, next);
      prev = tr;
    }
    for (const [k, tr] of rows) if (!keep.has(k)) tr.remove();
  }

  function setCell(tr, i, text) {
    const c = tr.cells[i];
    const t = text === undefined || text === null ? "" : String(text);
    if (c.textContent !== t) c.textContent = t;
  }

  function stateCell(td, state) {
    td.className = "state";
    td.dataset.state = state;
    if (td.textContent !== state) td.textContent = state;
  }

  function progressOf(t) {
    const r = t.result;
    if (t.state === "PROGRESS" && r && typeof r === "object" &&
        typeof r.current === "number" && typeof r.total === "number" && r.total > 0)
      return r;
    return null;
  }

  function resultText(t) {
    if (t.error) return t.error;
    const p = progressOf(t);
    if (p) return p.current + " / " + p.total;
    if (t.state === "SUCCESS" && t.result !== null) return short(t.result, 120);
    return "";
  }

  function renderWorkers(s) {
    sync($("workers"), s.workers, (w) => w.name,
      () => {
        const tr = el("tr");
        for (let i = 0; i < 8; i++) tr.appendChild(el("td"));
        return tr;
      },
      (tr, w) => {
        setCell(tr, 0, w.name);
        stateCell(tr.cells[1], w.status);
        setCell(tr, 2, w.heartbeat_age_ms === null ? "" : seconds(w.heartbeat_age_ms) + " ago");
        setCell(tr, 3, w.last_event_age_ms === null ? "none yet" : seconds(w.last_event_age_ms) + " ago");
        // Workers seen through Celery events: no concurrency, maybe no counts.
        setCell(tr, 4, w.running === null ? "" :
          w.concurrency === null ? String(w.running) : w.running + " / " + w.concurrency);
        setCell(tr, 5, w.succeeded);
        setCell(tr, 6, w.failed);
        setCell(tr, 7, w.dead_lettered);
      });
  }

  function renderQueues(s) {
    sync($("queues"), s.queues, (q) => q.name,
      () => {
        const tr = el("tr");
        for (let i = 0; i < 3; i++) tr.appendChild(el("td"));
        return tr;
      },
      (tr, q) => {
        setCell(tr, 0, q.name);
        setCell(tr, 1, q.kind);
        setCell(tr, 2, q.depth === null ? "unknown" : q.depth);
      });
  }

  function renderSpark(s) {
    const series = s.throughput || [];
    const max = Math.max(1, ...series);
    const step = series.length > 1 ? 300 / (series.length - 1) : 300;
    const pts = series.map((v, i) => (i * step).toFixed(1) + "," + (48 - (v / max) * 46).toFixed(1));
    $("spark").querySelector("polyline").setAttribute("points", pts.join(" "));
    $("finished").textContent = String(s.finished || 0);
  }

  function renderTasks(s) {
    sync($("tasks"), s.tasks, (t) => t.task_id,
      (t) => {
        const tr = el("tr");
        const idCell = el("td");
        const open = el("button", t.task_id, "link open");
        open.type = "button";
        open.addEventListener("click", () => {
          selected = tr.dataset.key;
          renderDetail();
        });
        idCell.appendChild(open);
        tr.appendChild(idCell);
        for (let i = 0; i < 4; i++) tr.appendChild(el("td"));
        tr.appendChild(el("td", "", "result"));
        const act = el("td");
        const revoke = el("button", "Revoke", "danger revoke");
        revoke.type = "button";
        revoke.addEventListener("click", async () => {
          try {
            await api("DELETE", "/tasks/" + encodeURIComponent(tr.dataset.key));
            say("Revoked " + tr.dataset.key);
          } catch (e) {
            say(e.message);
          }
        });
        act.appendChild(revoke);
        tr.appendChild(act);
        return tr;
      },
      (tr, t) => {
        tr.dataset.state = t.state;
        setCell(tr, 1, t.name);
        stateCell(tr.cells[2], t.state);
        setCell(tr, 3, seconds(t.runtime_ms));
        setCell(tr, 4, t.retries);
        setCell(tr, 5, resultText(t));
        tr.cells[6].querySelector("button").hidden = t.final;
      });
  }

  function renderDead(s) {
    sync($("dead"), s.dead_letters, (d) => d.task_id,
      () => {
        const tr = el("tr");
        for (let i = 0; i < 3; i++) tr.appendChild(el("td"));
        const act = el("td");
        const requeue = el("button", "Requeue", "requeue");
        requeue.type = "button";
        requeue.addEventListener("click", async () => {
          const as = $("requeue-task").value.trim();
          try {
            const r = await api("POST", "/dead-letters/" + encodeURIComponent(tr.dataset.key) + "/requeue",
              as ? { task: as } : {});
            say("Requeued " + tr.dataset.key + " as " + r.task_id);
          } catch (e) {
            say(e.message);
          }
        });
        const del = el("button", "Delete", "danger delete");
        del.type = "button";
        del.addEventListener("click", async () => {
          try {
            await api("DELETE", "/dead-letters/" + encodeURIComponent(tr.dataset.key));
            say("Deleted dead letter " + tr.dataset.key);
          } catch (e) {
            say(e.message);
          }
        });
        act.appendChild(requeue);
        act.appendChild(document.createTextNode(" "));
        act.appendChild(del);
        tr.appendChild(act);
        return tr;
      },
      (tr, d) => {
        setCell(tr, 0, d.task_id);
        setCell(tr, 1, d.name);
        setCell(tr, 2, d.reason);
        tr.cells[3].querySelector(".requeue").disabled = !d.requeueable;
      });
  }

  function renderDetail() {
    const panel = $("detail");
    const t = last && selected ? last.tasks.find((x) => x.task_id === selected) : null;
    panel.hidden = !t;
    if (!t) return;
    $("detail-id").textContent = t.task_id;
    $("detail-name").textContent = t.name || "";
    stateCell($("detail-state"), t.state);
    const p = progressOf(t);
    const bar = $("detail-progress");
    if (p) {
      bar.max = p.total;
      bar.value = p.current;
      $("detail-progress-text").textContent = p.current + " / " + p.total;
    } else if (t.state === "SUCCESS") {
      bar.max = 1;
      bar.value = 1;
      $("detail-progress-text").textContent = "done";
    } else {
      bar.max = 1;
      bar.value = 0;
      $("detail-progress-text").textContent = "";
    }
    $("detail-runtime").textContent = seconds(t.runtime_ms);
    $("detail-retries").textContent = String(t.retries);
    $("detail-error").textContent = t.error || "";
    $("detail-result").textContent = t.result === null ? "" : JSON.stringify(t.result, null, 2);
  }

  function render(s) {
    last = s;
    renderWorkers(s);
    renderQueues(s);
    renderSpark(s);
    renderTasks(s);
    renderDead(s);
    renderDetail();
    $("updated").textContent = "updated " + new Date(s.time_ms).toLocaleTimeString();
  }

  function setConn(state, text) {
    const c = $("conn");
    c.dataset.state = state;
    c.textContent = text;
  }

  function connect() {
    if (source) source.close();
    const url = "/dashboard/stream" + (token ? "?access_token=" + encodeURIComponent(token) : "");
    source = new EventSource(url);
    source.addEventListener("open", () => setConn("live", "live"));
    source.addEventListener("snapshot", (ev) => {
      setConn("live", "live");
      try {
        render(JSON.parse(ev.data));
      } catch (e) {
        say("bad snapshot: " + e.message);
      }
    });
    source.addEventListener("error", async () => {
      setConn("error", "reconnecting…");
      // EventSource hides the status: ask once whether the token is the problem.
      try {
        const r = await fetch("/dashboard/state", { headers: headers(false), cache: "no-store" });
        if (r.status === 401) {
          source.close();
          setConn("error", "token needed");
          say("The server needs an API token: enter it above.");
        }
      } catch (e) {
        /* the server is away: EventSource retries by itself */
      }
    });
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    if (token) sessionStorage.setItem("aiqueue.token", token);
    else sessionStorage.removeItem("aiqueue.token");
    say("");
    connect();
  });

  $("enqueue-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let args;
    try {
      args = JSON.parse($("enqueue-args").value || "[]");
    } catch (e) {
      say("Args: not JSON (" + e.message + ")");
      return;
    }
    try {
      const r = await api("POST", "/tasks", { task: $("enqueue-task").value.trim(), args });
      say("Sent " + r.task_id);
      selected = r.task_id;
    } catch (e) {
      say(e.message);
    }
  });

  $("detail-close").addEventListener("click", () => {
    selected = null;
    renderDetail();
  });

  connect();
})();
