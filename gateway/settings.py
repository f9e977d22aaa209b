"""Process settings from the command line and the environment (not the policy file)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_CONFIG = "config/routes.yaml"


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    config: str
    listen: Address
    admin_listen: Address
    workers: int = 1
    drain_timeout_s: float = 30.0
    shutdown_delay_s: float = 5.0  # SIGTERM: keep serving this long before draining
    watch_interval_s: float = 2.0
    mode: str | None = None  # --mode: over the policy's `mode:`


def parse_address(text: str) -> Address:
    """`HOST:PORT`, `[v6]:PORT` or `:PORT` (all interfaces); raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return Address(host, port)


def config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return explicit or env.get("GATEWAY_CONFIG") or DEFAULT_CONFIG
