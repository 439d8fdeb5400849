"""API keys: parsing, constant-time checks; CORS stays off unless configured."""

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from serve_app.http.security import enable_cors, key_is_valid, load_api_keys


def test_keys_come_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("MY_KEYS", " one, two ,,")
    assert load_api_keys("MY_KEYS") == (b"one", b"two")
    monkeypatch.delenv("MY_KEYS")
    assert load_api_keys("MY_KEYS") == ()
    assert load_api_keys(None) == ()


def test_key_checks():
    keys = (b"one", b"two")
    assert key_is_valid("Bearer one", keys) and key_is_valid("bearer two", keys)
    for header in (None, "", "one", "Bearer", "Bearer three", "Basic one", "Bearer one1"):
        assert not key_is_valid(header, keys)


def test_cors_is_added_only_with_origins():
    app = FastAPI()
    enable_cors(app, [])
    assert not any(m.cls is CORSMiddleware for m in app.user_middleware)
    enable_cors(app, ["https://a.test"])
    assert any(m.cls is CORSMiddleware for m in app.user_middleware)
