"""How the servicers meet gRPC: the generated ``add_<Service>Servicer_to_server`` with two things put in
front of every unary method (streaming ones, health's Watch, are registered as they are).

1. A request deserializer that never raises. grpc calls ``Message.FromString`` before the servicer runs, so
   bytes that are not a valid message would end as UNKNOWN ("Unexpected <class 'DecodeError'>") with a
   traceback in the log; here they get INVALID_ARGUMENT with a one-line reason.
2. The shutdown gate: while draining, a call reaching the servicer is served (gRPC had queued it before
   the signal) and its reply waits until gRPC takes no more calls (``Runtime.hold``; why: ``server.drain``).
"""
from __future__ import annotations

import grpc

from .runtime import VIA_GRPC, Runtime


class Undecodable:
    """What the safe deserializer returns for bytes that do not parse: the reason, for the reply."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def safe_deserializer(from_string):
    """``from_string`` (a generated ``Message.FromString``) that returns ``Undecodable`` instead of raising."""
    owner = getattr(from_string, "__self__", None)
    name = owner.DESCRIPTOR.full_name if hasattr(owner, "DESCRIPTOR") else "request"

    def deserialize(data: bytes):
        try:
            return from_string(data)
        except Exception as e:  # noqa: BLE001 - DecodeError, and whatever else a parser may raise on hostile bytes
            detail = " ".join(str(e).split()) or type(e).__name__
            return Undecodable(f"the request is not a valid {name} message: {detail}"[:300])
    return deserialize


def _gated(behavior, method: str, runtime: Runtime):
    async def call(request, context):
        VIA_GRPC.set(True)  # this call's own task (contextvars): Runtime.handle holds its error while draining
        if runtime.draining:
            runtime.arrivals += 1
        if request.__class__ is Undecodable:
            runtime.count(method, "INVALID_ARGUMENT")
            await runtime.hold()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        reply = await behavior(request, context)
        if runtime.draining:  # began while this call ran, or before
            await runtime.hold()
        return reply
    call.__name__ = method
    return call


class _Collect:
    """Stands in for the server while a generated ``add_..._to_server`` registers its handlers."""

    def __init__(self):
        self.service, self.handlers = None, {}

    def add_generic_rpc_handlers(self, handlers):
        pass  # the generic handler is rebuilt from the registered ones

    def add_registered_method_handlers(self, service: str, handlers: dict):
        self.service, self.handlers = service, handlers


def add_service(server, add_to_server, servicer, runtime: Runtime) -> dict[str, grpc.RpcMethodHandler]:
    """Register ``servicer`` as ``add_to_server(servicer, server)`` would, every unary method behind the safe
    deserializer and the shutdown gate. Returns the handlers by method name."""
    collect = _Collect()
    add_to_server(servicer, collect)
    if collect.service is None:
        raise RuntimeError(f"{add_to_server.__name__} registered no method handlers (grpcio-tools too old?)")
    handlers = {}
    for method, h in collect.handlers.items():
        if h.request_streaming or h.response_streaming:
            handlers[method] = h
            continue
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            _gated(h.unary_unary, method, runtime), request_deserializer=safe_deserializer(h.request_deserializer),
            response_serializer=h.response_serializer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(collect.service, handlers),))
    server.add_registered_method_handlers(collect.service, handlers)
    return handlers
