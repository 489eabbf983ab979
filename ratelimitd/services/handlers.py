"""Registers servicers with deserializers that never raise.

A request that does not parse (a string that is not UTF-8, garbage, a truncated message)
would otherwise fail inside grpc's C layer: the caller gets UNKNOWN and the log a traceback,
once per call. Here it becomes a `Malformed` value that the servicer answers with
INVALID_ARGUMENT.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError, Message


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request body that did not parse."""

    error: str

    @property
    def message(self) -> str:
        return f"malformed request: {self.error}"


def parse_message(message_type: type[Message], data: bytes) -> Message | Malformed:
    try:
        return message_type.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return Malformed(str(exc) or type(exc).__name__)


def _safe(message_type: type[Message]) -> Callable[[bytes], Message | Malformed]:
    return functools.partial(parse_message, message_type)


class MethodRegistry(Protocol):
    """What both gRPC servers (grpc.aio's and transport/h2's) take handlers with."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None: ...


def register_service(
    server: MethodRegistry,
    service_name: str,
    servicer: object,
    methods: dict[str, tuple[type[Message] | None, type[Message] | None]],
) -> None:
    """Registers unary methods: `{name: (request type, response type)}`.

    A type of None passes bytes through: the method parses its request body itself, or
    returns its response already encoded. Registered methods are found by grpc's C core by
    their path; a generic handler would be asked by Python code on every call (about 10 µs of
    CPU per call, measured with h2load)."""
    handlers: dict[str, Any] = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_safe(request_type) if request_type else None,
            response_serializer=response_type.SerializeToString if response_type else None,
        )
        for name, (request_type, response_type) in methods.items()
    }
    server.add_registered_method_handlers(service_name, handlers)


async def refuse_malformed(request: object, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
