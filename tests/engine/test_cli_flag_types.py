"""Numbers, ports and log levels are checked when the command line is read, naming the flag:
before a model loads, and even when the broker is down and the service would wait for it."""

from __future__ import annotations

import pytest
from pdserve.cli import build_parser
from pdserve.cpu_cores import online_cores
from pdserve.services.up import parse_pin


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["router", "--max-inflight", "0"], "argument --max-inflight: expected an integer >= 1, got 0"),
        (["router", "--port", "70000"], "argument --port: expected a port 1-65535, got 70000"),
        (["router", "--port", "http"], "argument --port: expected a port 1-65535, got 'http'"),
        (["router", "--log-level", "verbose"], "argument --log-level: expected one of debug, info, warning"),
        (["router", "--max-migrations", "-1"], "argument --max-migrations: expected an integer >= 0, got -1"),
        (["router", "--stall-timeout-s", "0"], "argument --stall-timeout-s: expected a number of seconds > 0"),
        (["router", "--request-timeout-s", "inf"], "argument --request-timeout-s: expected a number of seconds > 0"),
        (["decode", "--kv-lease-s", "-1"], "argument --kv-lease-s: expected a number of seconds > 0, got -1"),
        (["decode", "--ucx-port", "-3"], "argument --ucx-port: expected a port 1-65535, got -3"),
        (["worker", "--heartbeat-s", "nan"], "argument --heartbeat-s: expected a number of seconds > 0, got nan"),
        (["worker", "--block-size", "0"], "argument --block-size: expected an integer >= 1, got 0"),
        (["up", "--prefill", "0"], "argument --prefill: expected an integer >= 1, got 0"),
        (["up", "--workers", "-2"], "argument --workers: expected an integer >= 1, got -2"),
        (["generate", "--max-tokens", "0", "hi"], "argument --max-tokens: expected an integer >= 1, got 0"),
        (["worker", "--kv-cache-memory-bytes", "lots"], "argument --kv-cache-memory-bytes: expected a size in bytes"),
        (["worker", "--kv-cache-memory-bytes", "0G"], "argument --kv-cache-memory-bytes: expected a size in bytes"),
        (["up", "--gpu-memory-utilization", "1.5"], "argument --gpu-memory-utilization: expected a fraction in (0, 1]"),
        (["prefill", "--gpu-memory-utilization", "0"], "argument --gpu-memory-utilization: expected a fraction"),
    ],
)
def test_bad_numbers_are_refused_by_flag(capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_good_values_pass() -> None:
    args = build_parser().parse_args(["decode", "--ucx-port", "0", "--log-level", "WARNING", "--drain-timeout-s", "0"])
    assert (args.ucx_port, args.log_level, args.drain_timeout_s) == (0, "warning", 0.0)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4294967296", 1 << 32),
        ("4G", 4 << 30),
        ("4GiB", 4 << 30),
        ("512m", 512 << 20),
        ("1.5g", 3 << 29),
        ("64KB", 64 << 10),
    ],
)
def test_byte_sizes(text: str, size: int) -> None:
    assert build_parser().parse_args(["worker", "--kv-cache-memory-bytes", text]).kv_cache_memory_bytes == size


def test_pin_names_real_roles_and_cores() -> None:
    usable = sorted(online_cores())
    assert parse_pin(f"router={usable[0]};decode={usable[-1]}") == {"router": {usable[0]}, "decode": {usable[-1]}}
    with pytest.raises(SystemExit, match="no role 'routr'"):
        parse_pin(f"routr={usable[0]}")
    with pytest.raises(SystemExit, match=r"core\(s\) \[4096\] are not online here"):
        parse_pin("router=4096")
