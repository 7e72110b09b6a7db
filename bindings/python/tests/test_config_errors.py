"""Configuration and the status-code exception hierarchy."""
from __future__ import annotations

import pytest

import aiqueue
from aiqueue import errors


def test_unknown_key_raises_not_found_naming_it() -> None:
    with aiqueue.Config() as cfg:
        with pytest.raises(aiqueue.NotFound, match="broker.ulr") as e:
            cfg.set("broker.ulr", "memory://")
        assert e.value.code == errors.ENOTFOUND
        assert isinstance(e.value, LookupError)
        with pytest.raises(aiqueue.NotFound, match="no.such.key"):
            cfg.get("no.such.key")
    with pytest.raises(aiqueue.NotFound, match="worker.concurency"):
        aiqueue.Worker({"worker.concurency": 2})


def test_typed_setters_and_getters() -> None:
    with aiqueue.Config({"queue": "lyrics", "worker.concurrency": 3,
                         "task.retry_jitter": False}) as cfg:
        assert cfg["queue"] == "lyrics"
        assert cfg.get_int("worker.concurrency") == 3
        assert cfg.get_int("task.retry_jitter") == 0
        cfg["task.max_retries"] = "7"  # text is parsed by the key's type
        assert cfg.get_int("task.max_retries") == 7
        with pytest.raises(aiqueue.InvalidArgument):
            cfg.set("task.max_retries", 7.5)
        with pytest.raises(aiqueue.InvalidArgument):
            cfg.set("worker.concurrency", "many")
        with pytest.raises(aiqueue.InvalidArgument):
            cfg.set("queue", 5)
        copy = cfg.copy()
        cfg["queue"] = "other"
        assert copy["queue"] == "lyrics"
        copy.close()
        assert "memory" not in repr(cfg)


def test_load_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://from-env")
    monkeypatch.setenv("AIQUEUE_WORKER_CONCURRENCY", "5")
    with aiqueue.Config(env=True) as cfg:
        assert cfg["broker.url"] == "memory://from-env"
        assert cfg.get_int("worker.concurrency") == 5
    monkeypatch.setenv("AIQUEUE_WORKER_CONCURRENCY", "lots")
    with pytest.raises(aiqueue.InvalidArgument, match="AIQUEUE_WORKER_CONCURRENCY"):
        aiqueue.Config(env=True)


def test_closed_handles_refuse_calls() -> None:
    cfg = aiqueue.Config()
    cfg.close()
    cfg.close()
    with pytest.raises(aiqueue.InvalidArgument):
        cfg.get("queue")
    c = aiqueue.Client()
    c.close()
    with pytest.raises(aiqueue.StateError):
        c.enqueue("tasks.x")


def test_unsupported_scheme() -> None:
    with pytest.raises(aiqueue.AiqError) as e:
        aiqueue.Client({"broker.url": "nosuch://host"})
    assert e.value.code in (errors.EUNSUPPORTED, errors.EINVAL)


def test_enqueue_rejects_bad_options(client: aiqueue.Client) -> None:
    with pytest.raises(aiqueue.InvalidArgument):
        client.enqueue("tasks.x", priority=300)
    with pytest.raises(aiqueue.InvalidArgument):
        client.enqueue("tasks.x", countdown=-1)
    with pytest.raises(aiqueue.InvalidArgument):
        client.enqueue("", ())
    with pytest.raises(TypeError):
        client.enqueue("tasks.x", (object(),))


def test_every_code_has_a_class() -> None:
    codes = [v for k, v in vars(errors).items() if k.startswith("E") and isinstance(v, int)]
    assert len(codes) == 17
    for code in codes:
        exc = errors.error_for(code)
        assert isinstance(exc, aiqueue.AiqError)
        assert exc.code == code
        assert str(exc)  # aiq_strerror text
        if code != errors.ERROR:
            assert type(exc) is not aiqueue.AiqError, code
    assert isinstance(errors.error_for(errors.EJSON), aiqueue.InvalidArgument)
    assert isinstance(errors.error_for(errors.EBROKER), ConnectionError)
    assert str(errors.error_for(errors.ETIMEDOUT, "waited 5 s")) == "waited 5 s"


def test_queue_depth_and_purge(client: aiqueue.Client) -> None:
    client.ping()
    for i in range(3):
        client.enqueue("tasks.x", (i,))
    assert client.queue_depth() == 3
    assert client.purge() == 3
    assert client.queue_depth() == 0
