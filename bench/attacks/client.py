"""The calls of ``bench/http_attacks.py``: one ``httpx.Client`` on a LocalServer, API keys by
name (created on first use, as the administrator), photos by path, aligned crops."""

from __future__ import annotations

import random
import string
import time

from bench.web import api

MAX_TOP_K = 50


def random_token(rng: random.Random, k: int = 8) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(k))


def ms(values: list[float]) -> float | None:
    """The median (the upper one of an even count) of seconds, in ms to 0.1."""
    return round(1000 * sorted(values)[len(values) // 2], 1) if values else None


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Api:
    """The calls the bench makes (one httpx.Client, keys by name)."""

    def __init__(self, server):
        import httpx

        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=120.0)
        self.keys = {"admin": server.admin_key, "client": server.client_key}

    def key(self, name: str, role: str = "client") -> str:
        if name not in self.keys:
            self.keys[name] = self.server.add_key(name, role)
        return name

    def auth(self, name: str) -> dict:
        return api.bearer(self.keys[name])

    def enrol(self, subject: str, photo: str, token: str):
        r = api.enrol(self.http, self.keys["admin"], subject, read(photo), token, aligned=True)
        if r.status_code != 201:
            raise RuntimeError(f"enrol {subject}: {r.status_code} {r.text[:300]}")
        return r

    def verify(self, key: str, subject: str, photo: str, token: str, headers=None, data=None, params=None):
        t = time.perf_counter()
        r = api.verify(self.http, self.keys[key], subject, read(photo), token, aligned=True,
                       headers=headers, data=data, params=params)
        return r, time.perf_counter() - t

    def identify(self, key: str, photo: str, top_k: int = MAX_TOP_K, headers=None, data=None, params=None):
        t = time.perf_counter()
        r = api.identify(self.http, self.keys[key], read(photo), top_k=top_k, aligned=True,
                         headers=headers, data=data, params=params)
        return r, time.perf_counter() - t

    def close(self):
        self.http.close()
