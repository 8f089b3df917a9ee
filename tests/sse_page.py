"""A test page whose EventSource receives a run's events and writes what it saw into the DOM
(the browser test reads it back through the DevTools protocol)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from agentstream.core.events import EventType

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sse</title></head>
<body><pre id="out">{}</pre>
<script>
const q = new URLSearchParams(location.search);
const state = {seen: [], opens: 0, errors: 0, done: false};
const url = `/api/agents/runs/${q.get("run")}/events/?include_all=true&anonymous_token=${encodeURIComponent(q.get("token"))}`;
const es = new EventSource(url);
const render = () => { document.getElementById("out").textContent = JSON.stringify(state); };
es.onopen = () => { state.opens += 1; render(); };
es.onerror = () => { state.errors += 1; render(); };
for (const type of TYPES) {
  es.addEventListener(type, (e) => {
    if (!(e instanceof MessageEvent)) return;  // "error" is also EventSource's connection error
    state.seen.push(Number(e.lastEventId));
    if (TERMINAL.includes(type)) { state.done = true; es.close(); }
    render();
  });
}
</script></body></html>"""

TERMINAL = ["run.succeeded", "run.failed", "run.cancelled", "run.timed_out"]


def sse_page(request: HttpRequest) -> HttpResponse:
    script = f"const TYPES = {[t.value for t in EventType]!r}; const TERMINAL = {TERMINAL!r};"
    return HttpResponse(PAGE.replace("<script>", "<script>\n" + script, 1))
