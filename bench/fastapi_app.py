"""The FastAPI + uvicorn + Celery baseline for `POST /analyze`: the same route
and answer as aiqueue-server (202 {"task_id", "status": "queued"}), sending
tasks.analyze_track with .delay() on the same broker (BENCH_BROKER).

  python3 -m uvicorn fastapi_app:app --host 127.0.0.1 --port PORT --workers 2
"""
from typing import Optional, Union

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Extra

from celeryapp import analyze_track

app = FastAPI()


class Analyze(BaseModel, extra=Extra.forbid):
    track_id: Union[str, int]
    text: str
    analyzer: Optional[str] = None
    options: Optional[dict] = None


@app.post("/analyze", status_code=202)
def analyze(body: Analyze):
    # A plain `def` route: FastAPI runs it on its thread pool, so the blocking
    # .delay() does not stall the event loop.
    r = analyze_track.delay(body.track_id, body.text, analyzer=body.analyzer or "lyrics",
                            options=body.options or {})
    return JSONResponse({"task_id": r.id, "status": "queued"}, status_code=202)
