"""docker-compose.yml and ops/Dockerfile, checked without a Docker engine (CI has none): every
pdserve service's command and PDSERVE_* environment parse as that service would parse them, and
what the Dockerfile copies and installs exists in this repository."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pdserve.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return loaded


def pdserve_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if svc.get("image") == "pdserve:latest"}


def test_every_role_is_there_and_scalable() -> None:
    services = pdserve_services()
    assert {"router", "prefill", "decode"} <= set(services)
    for name in ("prefill", "decode"):  # `--scale` needs services without fixed host ports or names
        assert "ports" not in services[name] and "container_name" not in services[name]


@pytest.mark.parametrize("name", sorted(pdserve_services()))
def test_service_command_and_environment_parse(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = pdserve_services()[name]
    for key, value in service["environment"].items():
        monkeypatch.setenv(key, str(value))
    args = build_parser().parse_args(service["command"])  # SystemExit (a failed test) on any bad flag or value
    assert args.command == name
    assert args.nats == "nats://nats:4222"
    assert "nats" in service["depends_on"]


def test_dockerfile_copies_and_extras_exist() -> None:
    dockerfile = (ROOT / "ops/Dockerfile").read_text(encoding="utf-8")
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"ops/Dockerfile copies {source}, which is not in the repository"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    for group in re.findall(r"pip install [^\n]*\.\[([\w,]+)\]", dockerfile):
        for extra in group.split(","):
            assert extra in extras, f"ops/Dockerfile installs the extra [{extra}], which pyproject.toml lacks"
    assert 'ENTRYPOINT ["pdserve"]' in dockerfile
