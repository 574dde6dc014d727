"""A stand-in OPA server on loopback: the REST calls the OPA engine makes,
evaluated with the embedded engine, with switches to be slow, to fail with
500, or to be down (connections refused)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from sandbox.engines.embedded import CompiledRego
from sandbox.engines.rego_compile import RegoCompileError
from sandbox.policy.model import RegoConfig, RegoModule


class FakeOpa:
    def __init__(self) -> None:
        self.policies: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.queries: list[tuple[str, dict[str, Any]]] = []
        self.delay = 0.0
        self.fail = False
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._cache: dict[tuple[str, str], CompiledRego] = {}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/policies", self._list)
        app.router.add_get("/v1/policies/", self._list)
        app.router.add_route("*", "/v1/policies/{id:.+}", self._policy)
        app.router.add_route("*", "/v1/data", self._data)
        app.router.add_route("*", "/v1/data/{path:.*}", self._data)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()
        self._port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self._port}"

    async def stop(self) -> None:
        """Down: the port refuses connections until ``start`` again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _list(self, request: web.Request) -> web.Response:
        result = [{"id": key, "raw": raw} for key, raw in self.policies.items()]
        return web.json_response({"result": result})

    async def _policy(self, request: web.Request) -> web.Response:
        identifier = request.match_info["id"]
        if request.method == "PUT":
            self.policies[identifier] = await request.text()
            return web.json_response({})
        if identifier not in self.policies:
            return _error(404, "resource_not_found", f"policy {identifier!r}")
        if request.method == "DELETE":
            del self.policies[identifier]
            return web.json_response({})
        raw = self.policies[identifier]
        return web.json_response({"result": {"id": identifier, "raw": raw}})

    async def _data(self, request: web.Request) -> web.Response:
        path = request.match_info.get("path", "").strip("/")
        if request.method == "PUT" and not path:
            self.data = await request.json()
            return web.Response(status=204)
        if request.method == "GET" and not path:
            return web.json_response({"result": self.data})
        if request.method != "POST":
            return _error(400, "invalid_parameter", "unsupported in the fake")
        return await self._query(path, await request.json())

    async def _query(self, path: str, body: dict[str, Any]) -> web.Response:
        self.queries.append((path, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            return _error(500, "internal_error", "the fake was told to fail")
        direction = path.split("/")[1]
        try:
            value = self._compiled(direction).evaluate(
                direction, json.dumps(body["input"])
            )
        except (RegoCompileError, RuntimeError) as exc:
            return _error(500, "internal_error", str(exc))
        return web.json_response({} if value is None else {"result": value})

    def _compiled(self, direction: str) -> CompiledRego:
        # Compiled once per state of the store, as OPA does on each write.
        key = (direction, json.dumps([self.policies, self.data], sort_keys=True))
        if key not in self._cache:
            modules = tuple(RegoModule(k, raw) for k, raw in self.policies.items())
            data = json.dumps(self.data)
            config = RegoConfig(modules, (), data, frozenset({direction}))
            self._cache[key] = CompiledRego(config)
        return self._cache[key]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)
