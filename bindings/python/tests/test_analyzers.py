"""The built-in analysis task, with the C lyrics analyzer and Python analyzers."""
from __future__ import annotations

import pytest

import aiqueue
from aiqueue import Task

LYRICS = """Hello darkness, my old friend
I've come to talk with you again
Hello darkness, my old friend
Because a vision softly creeping"""


def test_analyze_track_with_builtin_lyrics(worker: aiqueue.Worker,
                                           client: aiqueue.Client) -> None:
    worker.start()
    r = client.enqueue("tasks.analyze_track", ("track-7", LYRICS),
                       {"analyzer": "lyrics", "options": {"top_words": 3}})
    out = r.get(timeout=10)
    assert out["track_id"] == "track-7"
    assert out["analyzer"] == "lyrics"
    analysis = out["analysis"]
    assert analysis["line_count"] == 4
    assert len(analysis["top_words"]) == 3
    assert analysis == aiqueue.analyze_lyrics(LYRICS, {"top_words": 3})


def test_python_analyzer(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    @worker.analyzer("shout")
    def shout(task: Task, text: str, params: dict) -> dict:
        return {"upper": text.upper()[: params.get("n", 5)], "task": task.name}

    worker.start()
    out = client.enqueue("tasks.analyze_track", (12, "quiet song"),
                         {"analyzer": "shout", "options": {"n": 3}}).get(timeout=5)
    assert out == {"track_id": 12, "analyzer": "shout",
                   "analysis": {"upper": "QUI", "task": "tasks.analyze_track"}}


def test_python_analyzer_failure(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    class ModelDown(RuntimeError):
        pass

    @worker.analyzer("flaky")
    def flaky(task: Task, text: str, params: dict) -> dict:
        raise ModelDown("no model")

    worker.start()
    with pytest.raises(aiqueue.TaskFailed) as e:
        client.enqueue("tasks.analyze_track", ("t", "x"), {"analyzer": "flaky"}).get(timeout=5)
    assert e.value.exc_type == "ModelDown"


def test_unknown_analyzer_fails(worker: aiqueue.Worker, client: aiqueue.Client) -> None:
    worker.start()
    with pytest.raises(aiqueue.TaskFailed):
        client.enqueue("tasks.analyze_track", ("t", "x"), {"analyzer": "nope"}).get(timeout=5)


def test_analyze_lyrics_errors() -> None:
    with pytest.raises(aiqueue.InvalidArgument):
        aiqueue.analyze_lyrics("x", {"top_words": "many"})
