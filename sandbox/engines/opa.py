"""The OPA engine: a real OPA server, through opa-python-client (async).

At start the bundle's modules and data are put into OPA (``PUT
/v1/policies/<id>``, ``PUT /v1/data``) and read back, so what OPA enforces
is exactly what the policy hash covers; a module under another id that is
not ours stops the start, since it could change our decisions. Per request
the entry point is asked with ``POST /v1/data/sandbox/<direction>/decision``.
Unreachable, slow (``timeout``) or failing: the request is refused with 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
from opa_client import AsyncOpaClient
from opa_client import errors as opa_errors
from yarl import URL

from sandbox.engines.base import EngineStartError, read_decision, unavailable
from sandbox.policy.decision import Decision
from sandbox.policy.input_document import EGRESS, INGRESS, ingress_document
from sandbox.policy.inputs import IngressRequest
from sandbox.policy.model import RegoConfig

log = logging.getLogger(__name__)

# opa-python-client's errors share no base class.
_CLIENT_ERRORS = (
    opa_errors.ConnectionsError,
    opa_errors.DeletePolicyError,
    opa_errors.PolicyNotFoundError,
    opa_errors.RegoParseError,
    opa_errors.SSLError,
    opa_errors.TypeException,
)

DEFAULT_TIMEOUT = 1.0
# Our modules' ids in OPA: "sandbox/<bundle path>".
POLICY_ID_PREFIX = "sandbox/"
# OPA's default turns a failing builtin into "undefined"; we want its error.
_STRICT = {"strict-builtin-errors": "true"}


def policy_id(module_path: str) -> str:
    return POLICY_ID_PREFIX + module_path


class OpaEngine:
    name = "opa"

    def __init__(
        self, config: RegoConfig, url: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.config = config
        self.url = URL(url)
        self.timeout = timeout
        self._client: AsyncOpaClient | None = None

    async def start(self) -> None:
        client = AsyncOpaClient(
            host=self.url.host or "127.0.0.1",
            port=self.url.port or 8181,
            ssl=self.url.scheme == "https",
            timeout=self.timeout,
            # A retry would stretch the caller's wait past our own timeout.
            retries=0,
        )
        await client.__aenter__()
        self._client = client
        try:
            await self._upload(client)
        except (*_CLIENT_ERRORS, aiohttp.ClientError, TimeoutError) as exc:
            raise EngineStartError(
                f"OPA at {self.url} refused the bundle: {exc}"
            ) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close_connection()
            self._client = None

    async def decide_ingress(self, request: IngressRequest) -> Decision:
        return await self._decide(INGRESS, ingress_document(request))

    async def decide_egress(self, document: dict[str, Any]) -> Decision:
        return await self._decide(EGRESS, document)

    async def _decide(self, direction: str, document: dict[str, Any]) -> Decision:
        where = f"data.sandbox.{direction}.decision"
        if self._client is None or direction not in self.config.decides:
            return unavailable(f"the OPA engine does not decide {direction}")
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._client.query_rule(
                    document, f"sandbox/{direction}", "decision", _STRICT
                )
        except TimeoutError:
            return unavailable(f"OPA at {self.url} did not answer in {self.timeout}s")
        except aiohttp.ClientResponseError as exc:
            return unavailable(f"OPA at {self.url} failed ({exc.status}) on {where}")
        except (aiohttp.ClientError, ValueError, *_CLIENT_ERRORS) as exc:
            return unavailable(f"OPA at {self.url} is unreachable: {exc}")
        if not isinstance(answer, dict):
            return unavailable(f"OPA at {self.url} gave no result object for {where}")
        return read_decision(answer.get("result"), where, direction)

    async def _upload(self, client: AsyncOpaClient) -> None:
        ours = {policy_id(module.path): module.source for module in self.config.modules}
        for stale in await self._stale_ids(client, ours):
            await client.delete_policy(stale)
        for identifier, source in ours.items():
            await client.update_policy_from_string(
                source, identifier, rego_compat=False
            )
        await client.update_or_create_data(_data(self.config), "")
        await self._verify(client, ours)

    async def _stale_ids(
        self, client: AsyncOpaClient, ours: dict[str, str]
    ) -> list[str]:
        present = await client.get_policies_list()
        foreign = [i for i in present if not i.startswith(POLICY_ID_PREFIX)]
        if foreign:
            raise EngineStartError(
                f"OPA at {self.url} holds modules that are not in the policy "
                f"bundle ({', '.join(sorted(foreign))}); give the sandbox an OPA "
                "of its own, since those modules could change its decisions"
            )
        return [i for i in present if i not in ours]

    async def _verify(self, client: AsyncOpaClient, ours: dict[str, str]) -> None:
        for identifier, source in ours.items():
            held = await client.get_policy(identifier)
            if held.get("result", {}).get("raw") != source:
                raise EngineStartError(
                    f"OPA at {self.url} holds other text under {identifier!r} "
                    "than the bundle's module"
                )
        log.info(
            "OPA at %s holds the bundle's %s modules and data",
            self.url,
            len(ours),
        )


def _data(config: RegoConfig) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(config.data_json)
    return document
