"""`ratelimitd healthcheck` finds the server's address the way `serve` worked it out."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratelimitd.healthcheck import healthcheck_url, serve_arguments, server_settings, settings_of
from ratelimitd.settings import Settings


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["/opt/ratelimitd/bin/python", "/opt/ratelimitd/bin/ratelimitd", "serve"], []),
        (["ratelimitd", "serve", "--http-port", "9090"], ["--http-port", "9090"]),
        (["python", "-m", "ratelimitd", "serve", "--workers", "2"], ["--workers", "2"]),
        (["ratelimitd", "healthcheck"], None),
        (["python", "-m", "ratelimitd", "query", "serve"], None),
        (["/usr/bin/redis-server", "*:6379"], None),
    ],
)
def test_serve_arguments_are_read_from_a_command_line(
    words: list[str], expected: list[str] | None
) -> None:
    assert serve_arguments(words) == expected


def test_flags_win_over_the_environment_as_in_serve() -> None:
    environ = {"RATELIMITD_HTTP_PORT": "8080", "RATELIMITD_HOST": "10.0.0.5"}
    settings = settings_of(["--http-port", "9090"], environ)
    assert (settings.host, settings.http_port) == ("10.0.0.5", 9090)
    assert settings_of([], environ).http_port == 8080


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080/healthcheck"),
        ("::", "http://[::1]:8080/healthcheck"),
        ("10.0.0.5", "http://10.0.0.5:8080/healthcheck"),
        ("fd00::5", "http://[fd00::5]:8080/healthcheck"),
    ],
)
def test_a_wildcard_address_is_asked_on_loopback(host: str, url: str) -> None:
    assert healthcheck_url(Settings(host=host, http_port=8080)) == url


def fake_process(proc: Path, pid: int, argv: list[str], environ: dict[str, str]) -> None:
    directory = proc / str(pid)
    directory.mkdir(parents=True)
    (directory / "cmdline").write_bytes(b"\0".join(word.encode() for word in argv) + b"\0")
    (directory / "environ").write_bytes(
        b"\0".join(f"{key}={value}".encode() for key, value in environ.items()) + b"\0"
    )


def test_the_server_process_is_found_in_proc(tmp_path: Path) -> None:
    """PID 1 is not the server here (an init), a later process is; others are passed over."""
    fake_process(tmp_path, 1, ["/sbin/tini", "--", "sh"], {})
    fake_process(tmp_path, 7, ["ratelimitd", "serve", "--http-port", "9191"], {"A": "1"})
    fake_process(tmp_path, 9, ["ratelimitd", "serve", "--http-port", "9999"], {})
    (tmp_path / "self").mkdir()
    assert server_settings(proc=tmp_path).http_port == 9191
    assert server_settings(pid=9, proc=tmp_path).http_port == 9999


def test_the_environment_of_the_server_is_the_one_read(tmp_path: Path) -> None:
    fake_process(tmp_path, 1, ["ratelimitd", "serve"], {"RATELIMITD_HTTP_PORT": "7070"})
    assert server_settings(proc=tmp_path).http_port == 7070
