"""The client's core, which does no I/O: requests built, answers parsed, errors translated."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.duration_pb2 import Duration
from ratelimitd_client import (
    Decision,
    DescriptorStatus,
    InvalidRequest,
    LimitState,
    RateLimit,
    ServiceUnavailable,
    Unauthenticated,
)
from ratelimitd_client._core import (
    ClientOptions,
    admin_metadata,
    ceil_seconds,
    check_request,
    decision_from_response,
    failure_decision,
    most_restrictive,
    normalize_descriptors,
    peek_request,
    reset_request,
    response_from_result,
    states_from_response,
    translate_error,
)
from ratelimitd_client._failures import FailureLog
from ratelimitd_client._proto.ratelimitd.v1 import ratelimitd_pb2 as admin_pb

Response = rls_pb2.RateLimitResponse
OK, OVER = Response.Code.Value("OK"), Response.Code.Value("OVER_LIMIT")
UNITS = Response.RateLimit.Unit


def duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def status(
    code: int,
    limit: int | None = None,
    remaining: int = 0,
    reset: float = 0.0,
    unit: str = "MINUTE",
    name: str = "",
) -> Response.DescriptorStatus:
    message = Response.DescriptorStatus(
        code=code, limit_remaining=remaining, duration_until_reset=duration(reset)
    )
    if limit is not None:
        message.current_limit.CopyFrom(
            Response.RateLimit(requests_per_unit=limit, unit=UNITS.Value(unit), name=name)
        )
    return message


def response(overall: int, *statuses: Response.DescriptorStatus) -> Response:
    return Response(overall_code=overall, statuses=list(statuses))


# Requests ----------------------------------------------------------------------------------


def test_a_mapping_keeps_its_insertion_order_and_sequences_are_taken_as_given() -> None:
    assert normalize_descriptors(
        [{"route": "login", "remote_address": "1.2.3.4"}, [("b", "2"), ("a", "1")]]
    ) == ((("route", "login"), ("remote_address", "1.2.3.4")), (("b", "2"), ("a", "1")))
    request = check_request("web", [{"z": "1", "a": "2"}])
    assert [(e.key, e.value) for e in request.descriptors[0].entries] == [("z", "1"), ("a", "2")]


@pytest.mark.parametrize(
    "descriptors",
    [
        [],
        "route=login",
        {"route": "login"},  # one descriptor, not a list of them
        [{}],
        [[]],
        [["route"]],
        [[("route",)]],
        [[("", "login")]],
        [[("route", 1)]],
        [{"route": None}],
        [42],
    ],
)
def test_bad_descriptors_are_refused_before_anything_is_sent(descriptors: Any) -> None:
    with pytest.raises(InvalidRequest):
        check_request("web", descriptors)


def test_hits_go_in_the_request_and_zero_is_a_probe_on_every_descriptor() -> None:
    three = check_request("web", [{"a": "1"}, {"b": "2"}], hits=3)
    assert three.hits_addend == 3
    assert not any(d.HasField("hits_addend") for d in three.descriptors)
    probe = check_request("web", [{"a": "1"}, {"b": "2"}], hits=0)
    # a request-level 0 would mean 1: the per-descriptor 0 is what makes it a probe
    assert all(d.HasField("hits_addend") and d.hits_addend.value == 0 for d in probe.descriptors)


@pytest.mark.parametrize("hits", [-1, 2**32, True, 1.5, "1"])
def test_bad_hits_are_refused(hits: Any) -> None:
    with pytest.raises(InvalidRequest, match="hits"):
        check_request("web", [{"a": "1"}], hits=hits)


def test_an_empty_domain_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="domain"):
        check_request("", [{"a": "1"}])
    with pytest.raises(InvalidRequest, match="domain"):
        reset_request("", [{"a": "1"}])


def test_admin_requests_carry_the_domain_descriptors_and_a_bearer_token() -> None:
    reset = reset_request("web", [{"route": "login", "ip": "1.1.1.1"}])
    assert reset.domain == "web"
    assert [(e.key, e.value) for e in reset.descriptors[0].entries] == [
        ("route", "login"),
        ("ip", "1.1.1.1"),
    ]
    assert peek_request("web", [[("k", "v")]]).descriptors[0].entries[0].key == "k"
    assert admin_metadata("s3cret") == (("authorization", "Bearer s3cret"),)


# Answers -----------------------------------------------------------------------------------


def test_an_allowed_answer_shows_the_limit_with_the_least_left() -> None:
    decision = decision_from_response(
        response(
            OK,
            status(OK, remaining=4294967295),  # unlimited: no current_limit
            status(OK, limit=10, remaining=3, reset=12.3, name="per_ip"),
            status(OK, limit=100, remaining=50, reset=59.0, unit="HOUR"),
            status(OK),  # no rule matched
        )
    )
    assert decision.allowed and decision.retry_after == 0 and decision.failure is None
    assert (decision.limit, decision.remaining, decision.reset_after) == (10, 3, 12.3)
    assert decision.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "3",
        "RateLimit-Reset": "13",
    }
    assert decision.statuses[0] == DescriptorStatus("OK", None, None, 0.0)
    assert decision.statuses[1] == DescriptorStatus(
        "OK", RateLimit(10, "minute", "per_ip"), 3, 12.3
    )
    assert decision.statuses[2].limit == RateLimit(100, "hour", "")
    assert all(s.allowed for s in decision.statuses)


def test_equal_remaining_shows_the_limit_that_resets_last() -> None:
    decision = decision_from_response(
        response(OK, status(OK, 5, 2, reset=1.0), status(OK, 50, 2, reset=30.0))
    )
    assert (decision.limit, decision.reset) == (50, 30)


def test_a_denial_retries_after_the_slowest_denying_limit_rounded_up() -> None:
    decision = decision_from_response(
        response(
            OVER,
            status(OVER, limit=5, remaining=0, reset=2.2),
            status(OK, limit=100, remaining=40, reset=50.0),
            status(OVER, limit=10, remaining=0, reset=29.2, name="slow"),
        )
    )
    assert not decision.allowed
    assert decision.retry_after == 30
    assert (decision.limit, decision.remaining, decision.reset) == (10, 0, 30)
    assert decision.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "30",
        "Retry-After": "30",
    }
    assert [s.allowed for s in decision.statuses] == [False, True, False]


def test_retry_after_is_at_least_one_second_on_a_denial() -> None:
    decision = decision_from_response(response(OVER, status(OVER, limit=5, reset=0.0)))
    assert decision.retry_after == 1
    assert decision.headers()["Retry-After"] == "1"
    assert decision.headers()["RateLimit-Reset"] == "0"


def test_whole_seconds_round_up_but_ignore_float_noise() -> None:
    assert [ceil_seconds(s) for s in (0.0, 0.001, 0.1, 1.0, 1.0000000001, 840.0, 840.2)] == [
        0,
        1,
        1,
        1,
        1,
        840,
        841,
    ]
    decision = decision_from_response(response(OVER, status(OVER, 5, 0, reset=840.000000001)))
    assert decision.retry_after == 840


def test_without_any_limit_there_are_no_rate_limit_headers() -> None:
    decision = decision_from_response(response(OK, status(OK), status(OK, remaining=4294967295)))
    assert decision.allowed and decision.limit is None and decision.reset is None
    assert decision.headers() == {}


def test_global_shadow_mode_allows_even_when_a_status_is_over_limit() -> None:
    decision = decision_from_response(response(OK, status(OVER, limit=5, remaining=0, reset=9)))
    assert decision.allowed and decision.retry_after == 0
    assert "Retry-After" not in decision.headers()
    assert decision.headers()["RateLimit-Remaining"] == "0"


def test_most_restrictive_of_several_decisions() -> None:
    allowed_few = Decision(True, limit=10, remaining=1, reset_after=5.0)
    allowed_many = Decision(True, limit=100, remaining=90, reset_after=50.0)
    denied = Decision(False, retry_after=7, limit=5, remaining=0, reset_after=7.0)
    assert most_restrictive([]) is None
    assert most_restrictive([allowed_many, allowed_few]) is allowed_few
    assert most_restrictive([allowed_few, denied, allowed_many]) is denied
    no_limit = Decision(True)
    assert most_restrictive([no_limit, allowed_many]) is allowed_many
    assert most_restrictive([no_limit]) is no_limit


def test_peek_and_reset_answers_become_plain_values() -> None:
    peeked = admin_pb.PeekResponse(
        states=[
            admin_pb.LimitState(
                descriptor_index=1,
                rule="route_login.ip",
                name="login",
                algorithm="fixed_window",
                requests_per_unit=5,
                unit="minute",
                unit_multiplier=15,
                capacity=5,
                remaining=2,
                reset_after=duration(600.5),
                over_limit=False,
                shadow_mode=False,
            )
        ]
    )
    assert states_from_response(peeked) == [
        LimitState(
            1, "route_login.ip", "login", "fixed_window", 5, "minute", 15, 5, 2, 600.5, False, False
        )
    ]


# Failure mode and errors -------------------------------------------------------------------


def test_the_failure_mode_decides_when_ratelimitd_gives_no_answer() -> None:
    error = ServiceUnavailable("timeout", "DEADLINE_EXCEEDED: Deadline Exceeded")
    allowed = failure_decision(ClientOptions(failure_mode="allow"), error)
    assert allowed.allowed and allowed.headers() == {}
    assert allowed.failure is not None
    assert (allowed.failure.mode, allowed.failure.reason) == ("allow", "timeout")
    denied = failure_decision(ClientOptions(failure_mode="deny", failure_retry_after=3), error)
    assert not denied.allowed and denied.retry_after == 3
    assert denied.headers() == {"Retry-After": "3"}
    assert denied.failure is not None and denied.failure.mode == "deny"


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "details") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "kind", "reason"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, ServiceUnavailable, "timeout"),
        (grpc.StatusCode.UNAVAILABLE, ServiceUnavailable, "unavailable"),
        (grpc.StatusCode.INTERNAL, ServiceUnavailable, "error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ServiceUnavailable, "error"),
        (grpc.StatusCode.UNIMPLEMENTED, ServiceUnavailable, "error"),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest, None),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated, None),
        (grpc.StatusCode.PERMISSION_DENIED, Unauthenticated, None),
    ],
)
def test_grpc_errors_are_translated_in_one_place(
    code: grpc.StatusCode, kind: type[Exception], reason: str | None
) -> None:
    error = translate_error(FakeRpcError(code, "what happened"))
    assert type(error) is kind
    assert code.name in str(error) and "what happened" in str(error)
    if reason is not None:
        assert isinstance(error, ServiceUnavailable) and error.reason == reason
    failed_item = admin_pb.BatchResult(error_code=code.value[0], error_message="what happened")
    with pytest.raises(kind) as raised:  # a batch item's code: the same error
        response_from_result(failed_item)
    assert str(raised.value) == str(error)


def test_an_rpc_error_without_a_code_is_a_service_error() -> None:
    error = translate_error(grpc.RpcError("odd"))
    assert isinstance(error, ServiceUnavailable) and error.reason == "error"
    with pytest.raises(ServiceUnavailable, match="UNKNOWN: status 99"):
        response_from_result(admin_pb.BatchResult(error_code=99))


def test_a_decided_batch_item_is_its_response() -> None:
    decided = response(OVER, status(OVER, 3, 0, 20.0))
    item = admin_pb.BatchResult(response=decided.SerializeToString())
    assert response_from_result(item) == decided


@pytest.mark.parametrize(
    "options",
    [
        {"failure_mode": "open"},
        {"timeout": 0},
        {"timeout": -1.0},
        {"timeout": "50ms"},
        {"target": ""},
        {"failure_retry_after": 0},
        {"keepalive_time_s": 0},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        ClientOptions(**options)


def test_timeouts_tokens_and_channel_options() -> None:
    options = ClientOptions(admin_token="t0k", keepalive_time_s=30)
    assert options.timeout == 0.05
    assert options.timeout_for(None) == 0.05 and options.timeout_for(2) == 2.0
    with pytest.raises(InvalidRequest):
        options.timeout_for(0)
    assert options.token_for(None) == "t0k" and options.token_for("other") == "other"
    with pytest.raises(Unauthenticated):
        ClientOptions().token_for(None)
    grpc_options = dict(options.grpc_options())
    assert grpc_options["grpc.keepalive_time_ms"] == 30_000
    # a default gRPC server (ratelimitd's) refuses pings on idle connections or within 5 min
    assert grpc_options["grpc.keepalive_permit_without_calls"] == 0
    assert dict(ClientOptions().grpc_options())["grpc.keepalive_time_ms"] >= 300_000
    idle_pings = ClientOptions(keepalive_without_calls=True).grpc_options()
    assert ("grpc.keepalive_permit_without_calls", 1) in idle_pings
    extra = ClientOptions(channel_options=(("grpc.primary_user_agent", "app/1"),))
    assert ("grpc.primary_user_agent", "app/1") in extra.grpc_options()


def test_failures_are_logged_at_once_then_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = FailureLog("127.0.0.1:1", interval=5.0, clock=lambda: now[0])
    failure = failure_decision(
        ClientOptions(failure_mode="deny"), ServiceUnavailable("unavailable", "refused")
    ).failure
    assert failure is not None
    caplog.set_level(logging.INFO, logger="ratelimitd_client")
    log.failed(failure)
    for _ in range(3):
        now[0] += 1
        log.failed(failure)
    now[0] += 5
    log.failed(failure)
    log.answered()
    log.answered()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "WARNING", "INFO"]
    assert "failure_mode=deny denied 1 check(s)" in lines[0][1]
    assert "127.0.0.1:1" in lines[0][1] and "unavailable" in lines[0][1]
    assert "denied 4 check(s)" in lines[1][1]
    assert "after 5 check(s)" in lines[2][1]
