"""The empty baseline: a grpc.aio server whose ShouldRateLimit returns one constant OK.

Same grpcio and the same generated Envoy messages as ratelimitd, no decision, no metrics, no
backend: what "doing nothing" costs over gRPC. Usage: python -m bench.baseline_server PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

OK = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)


class ConstantServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        return OK


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(ConstantServicer(), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"baseline listening on {host}:{port}", flush=True)
    await stopping.wait()
    await server.stop(1)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.baseline_server PORT", file=sys.stderr)
        return 2
    asyncio.run(serve("127.0.0.1", int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
