"""The embedded Rego engine: regopy (rego-cpp) in worker threads.

Modules and data are compiled once per worker thread, at start; a decision
only sets the input and runs the compiled entry point. rego-cpp takes about
a millisecond per decision for the example policy, too long to hold the
event loop, and regopy calls C through ctypes, which releases the GIL, so
decisions run in a small pool of threads, each with its own interpreter
(an interpreter holds its input, so one must never serve two threads).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import regopy
from regopy import rego_shared

from sandbox.engines.base import read_decision, unavailable
from sandbox.engines.rego_compile import compile_bundle, entrypoint
from sandbox.policy.decision import Decision
from sandbox.policy.input_document import EGRESS, INGRESS, ingress_document
from sandbox.policy.inputs import IngressRequest
from sandbox.policy.model import RegoConfig


class RegoEvaluationError(RuntimeError):
    """An entry point failed to evaluate (a conflict, a builtin error...)."""


class CompiledRego:
    """One interpreter and its compiled bundle: for one thread at a time."""

    def __init__(self, config: RegoConfig) -> None:
        self.interpreter, self.bundle = compile_bundle(
            config.modules, config.data_json, sorted(config.decides)
        )

    def evaluate(self, direction: str, document_json: str) -> object:
        """The entry point's value (None when undefined); raises on errors."""
        self.interpreter.set_input_term(document_json)
        output = self.interpreter.query_bundle_entrypoint(
            self.bundle, entrypoint(direction)
        )
        if not output.ok():
            raise RegoEvaluationError(_error_text(output))
        if not output.results or not output.results[0].expressions:
            return None
        value: object = output.results[0].expressions[0]
        return value


class EmbeddedRegoEngine:
    name = "rego"

    def __init__(self, config: RegoConfig, workers: int | None = None) -> None:
        self.config = config
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._local = threading.local()
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(
            self.workers, thread_name_prefix="rego", initializer=self._compile
        )
        # Compile in every worker now, not on the first requests.
        loop = asyncio.get_running_loop()
        warm = [
            loop.run_in_executor(self._executor, _pause) for _ in range(self.workers)
        ]
        await asyncio.gather(*warm)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def decide_ingress(self, request: IngressRequest) -> Decision:
        return await self._decide(INGRESS, ingress_document(request))

    async def decide_egress(self, document: dict[str, Any]) -> Decision:
        return await self._decide(EGRESS, document)

    async def _decide(self, direction: str, document: dict[str, Any]) -> Decision:
        where = f"data.sandbox.{direction}.decision"
        if direction not in self.config.decides or self._executor is None:
            return unavailable(f"the Rego engine does not decide {direction}")
        try:
            text = json.dumps(document, allow_nan=False)
        except ValueError as exc:
            return unavailable(f"the input document is not JSON: {exc}")
        loop = asyncio.get_running_loop()
        try:
            value = await loop.run_in_executor(
                self._executor, self._evaluate, direction, text
            )
        except (RegoEvaluationError, regopy.RegoError) as exc:
            return unavailable(f"{where} failed to evaluate: {exc}")
        except ValueError as exc:
            # rego-cpp 1.5 leaves '"' unescaped in strings built at run time.
            return unavailable(f"{where} gave a result that is not JSON: {exc}")
        return read_decision(value, where, direction)

    def _compile(self) -> None:
        self._local.compiled = CompiledRego(self.config)

    def _evaluate(self, direction: str, text: str) -> object:
        compiled: CompiledRego = self._local.compiled
        return compiled.evaluate(direction, text)


def _pause() -> None:
    # Each warm-up call holds its worker briefly, so every worker starts.
    threading.Event().wait(0.01)


def _error_text(output: regopy.Output) -> str:
    # regopy's Node cannot read error nodes, so walk them through its C API.
    messages: list[str] = []
    _collect_messages(rego_shared.rego_output_node(output._impl), messages)
    return "; ".join(dict.fromkeys(messages)) or "rego-cpp gave an error result"


def _collect_messages(node: Any, messages: list[str]) -> None:
    if rego_shared.rego_node_type(node) == regopy.NodeKind.ErrorMessage:
        messages.append(rego_shared.rego_node_value(node))
        return
    for index in range(rego_shared.rego_node_size(node)):
        _collect_messages(rego_shared.rego_node_get(node, index), messages)
