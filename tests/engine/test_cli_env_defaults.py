"""PDSERVE_<FLAG> variables: checked as strictly as the flag itself, named in the error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pdserve.cli import build_parser


def parse(argv: list[str]) -> object:
    return build_parser().parse_args(argv)


def refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_valid_values_become_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDSERVE_PORT", "9100")
    monkeypatch.setenv("PDSERVE_MAX_MIGRATIONS", "5")
    monkeypatch.setenv("PDSERVE_MODE", "colocated")
    args = parse(["router", "--nats", "nats://127.0.0.1:4222"])
    assert (args.port, args.max_migrations) == (9100, 5)  # type: ignore[attr-defined]
    assert parse(["router", "--port", "9200"]).port == 9200  # type: ignore[attr-defined]
    assert parse(["up"]).mode == "colocated"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("variable", "value", "argv", "says"),
    [
        ("PDSERVE_PORT", "abc", ["router"], "expected a port 1-65535, got 'abc'"),
        ("PDSERVE_REQUEST_RATE", "fast", ["bench"], "invalid float value 'fast'"),
        ("PDSERVE_MODE", "foo", ["up"], "invalid choice 'foo' (choose from disaggregated, colocated)"),
        ("PDSERVE_TRANSFER_FAILURE_POLICY", "bogus", ["decode"], "invalid choice 'bogus'"),
        ("PDSERVE_IGNORE_EOS", "maybe", ["bench"], "expected one of 1, true, yes, on or 0, false, no, off"),
        ("PDSERVE_GOODPUT", "ttft:'500", ["bench"], "cannot split it into values"),
        ("PDSERVE_GOODPUT", "  ", ["bench"], "expected at least one value"),
    ],
)
def test_bad_values_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, argv: list[str],
    says: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, value)
    err = refusal(capsys, argv)
    assert f"environment variable {variable}={value!r}: {says}" in err


def test_only_the_command_being_run_checks_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # One environment serves every service of a compose file: `up`'s --mode means nothing to a decode worker.
    monkeypatch.setenv("PDSERVE_MODE", "foo")
    assert parse(["decode", "--nats", "nats://n:4222"]).nats == "nats://n:4222"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("word", "value"), [("1", True), ("Yes", True), ("on", True), ("0", False), ("off", False)])
def test_switch_words(monkeypatch: pytest.MonkeyPatch, word: str, value: bool) -> None:
    monkeypatch.setenv("PDSERVE_IGNORE_EOS", word)
    assert parse(["bench"]).ignore_eos is value  # type: ignore[attr-defined]


def test_several_values_are_shell_split_and_flags_replace_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDSERVE_GOODPUT", "ttft:500 tpot:50")
    assert parse(["bench"]).goodput == ["ttft:500", "tpot:50"]  # type: ignore[attr-defined]
    monkeypatch.setenv("PDSERVE_TARGET", "colocated:1 'ext=http://h:8000'")
    assert parse(["bench", "sweep"]).target == ["colocated:1", "ext=http://h:8000"]  # type: ignore[attr-defined]
    # A repeated option given on the command line replaces the environment's list, not extends it.
    args = parse(["bench", "sweep", "--target", "disaggregated:1:1", "--target=colocated:2"])
    assert args.target == ["disaggregated:1:1", "colocated:2"]  # type: ignore[attr-defined]


def test_a_service_with_a_bad_variable_exits_2_without_a_traceback() -> None:
    env = {"PDSERVE_PORT": "80a", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "pdserve.cli", "router", "--nats", "nats://127.0.0.1:1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "environment variable PDSERVE_PORT='80a': expected a port 1-65535, got '80a'" in proc.stderr
    assert "Traceback" not in proc.stderr
