"""`ratelimitd query`: ask a running service from the command line and print the answer."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2 as admin_pb
from ratelimitd._proto.ratelimitd.v1 import ratelimitd_pb2_grpc as admin_grpc

EXIT_ALLOWED, EXIT_OVER_LIMIT, EXIT_ERROR = 0, 1, 2
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--addr", default="127.0.0.1:8081", help="HOST:PORT of ratelimitd's gRPC port"
    )
    parser.add_argument("--domain", required=True)
    parser.add_argument(
        "--descriptor",
        action="append",
        required=True,
        metavar="K=V[,K2=V2]",
        help="one descriptor's entries; repeat for several descriptors",
    )
    parser.add_argument("--hits", type=int, default=1, help="hits to add (default 1)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--peek", action="store_true", help="show the limits without consuming (admin API)"
    )
    action.add_argument(
        "--reset", action="store_true", help="clear the matched counters (admin API)"
    )
    parser.add_argument("--token", help="admin token (default: $RATELIMITD_ADMIN_TOKEN)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")


class QueryError(Exception):
    """A call that ratelimitd answered with an error status."""


def window(unit: str, multiplier: int) -> str:
    """`minute`, or `15 minutes` for a limit counted over 15 of them."""
    return unit if multiplier <= 1 else f"{multiplier} {unit}s"


def parse_descriptor(text: str) -> list[tuple[str, str]]:
    entries = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"expected K=V[,K2=V2], got '{text}'")
        entries.append((key, value))
    return entries


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        descriptors = [parse_descriptor(text) for text in args.descriptor]
    except ValueError as exc:
        print(f"ratelimitd query: {exc}", file=err)
        return EXIT_ERROR
    with grpc.insecure_channel(args.addr) as channel:
        try:
            if args.peek or args.reset:
                return _admin(channel, args, descriptors, out)
            return _check(channel, args, descriptors, out)
        except grpc.RpcError as exc:
            print(f"ratelimitd query: {exc.code().name}: {exc.details()}", file=err)
            return EXIT_ERROR
        except QueryError as exc:
            print(f"ratelimitd query: {exc}", file=err)
            return EXIT_ERROR


def _check(
    channel: grpc.Channel,
    args: argparse.Namespace,
    descriptors: list[list[tuple[str, str]]],
    out: TextIO,
) -> int:
    """One `ShouldRateLimit` decision, asked through ratelimitd's batch call: the same
    decision, with each limit's window (Envoy's response has only its unit)."""
    request = rls_pb2.RateLimitRequest(domain=args.domain, hits_addend=args.hits)
    for entries in descriptors:
        descriptor = request.descriptors.add()
        for key, value in entries:
            descriptor.entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value))
    stub = admin_grpc.RateLimitBatchStub(channel)  # type: ignore[no-untyped-call]
    batch = admin_pb.ShouldRateLimitBatchRequest(requests=[request.SerializeToString()])
    (result,) = stub.ShouldRateLimitBatch(batch, timeout=args.timeout).results
    if result.error_code:
        raise QueryError(f"{STATUS_NAMES.get(result.error_code)}: {result.error_message}")
    response = rls_pb2.RateLimitResponse.FromString(result.response)
    multipliers = list(result.unit_multipliers) or [1] * len(response.statuses)
    codes = rls_pb2.RateLimitResponse.Code
    print(f"overall: {codes.Name(response.overall_code)}", file=out)
    for text, status, multiplier in zip(
        args.descriptor, response.statuses, multipliers, strict=False
    ):
        line = f"  {text}: {codes.Name(status.code)}"
        if status.HasField("current_limit"):
            limit = status.current_limit
            unit = rls_pb2.RateLimitResponse.RateLimit.Unit.Name(limit.unit).lower()
            name = f" ({limit.name})" if limit.name else ""
            reset = status.duration_until_reset.ToTimedelta().total_seconds()
            line += (
                f" limit {limit.requests_per_unit}/{window(unit, multiplier)}{name},"
                f" remaining {status.limit_remaining}, reset in {reset:g}s"
            )
        else:
            line += " no limit"
        print(line, file=out)
    return EXIT_OVER_LIMIT if response.overall_code == codes.Value("OVER_LIMIT") else EXIT_ALLOWED


def _admin(
    channel: grpc.Channel,
    args: argparse.Namespace,
    descriptors: list[list[tuple[str, str]]],
    out: TextIO,
) -> int:
    token = args.token or os.environ.get("RATELIMITD_ADMIN_TOKEN", "")
    metadata = (("authorization", f"Bearer {token}"),)
    stub = admin_grpc.RateLimitAdminStub(channel)  # type: ignore[no-untyped-call]
    built = [
        admin_pb.Descriptor(entries=[admin_pb.Entry(key=k, value=v) for k, v in entries])
        for entries in descriptors
    ]
    if args.reset:
        reply = stub.Reset(
            admin_pb.ResetRequest(domain=args.domain, descriptors=built),
            metadata=metadata,
            timeout=args.timeout,
        )
        print(f"cleared {reply.cleared} counters", file=out)
        return EXIT_ALLOWED
    peeked = stub.Peek(
        admin_pb.PeekRequest(domain=args.domain, descriptors=built),
        metadata=metadata,
        timeout=args.timeout,
    )
    for state in peeked.states:
        reset = state.reset_after.ToTimedelta().total_seconds()
        every = window(state.unit, state.unit_multiplier)
        flag = " OVER_LIMIT" if state.over_limit else ""
        print(
            f"{args.descriptor[state.descriptor_index]}: {state.rule} {state.algorithm}"
            f" {state.requests_per_unit}/{every}: remaining {state.remaining}, reset in {reset:g}s{flag}",
            file=out,
        )
    if not peeked.states:
        print("no limits match", file=out)
    return EXIT_OVER_LIMIT if any(state.over_limit for state in peeked.states) else EXIT_ALLOWED
