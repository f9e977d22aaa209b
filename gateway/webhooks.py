"""Svix / Standard Webhooks verification (pure, clock injected) and the delivery record.

Clerk signs webhooks with Svix: `svix-id`, `svix-timestamp`, `svix-signature`, where the
signature header holds space-separated `v1,<base64 HMAC-SHA256>` entries over
`"{id}.{timestamp}.{raw body}"` keyed by the base64 part of a `whsec_` secret. The
Standard Webhooks names (`webhook-*`) are the same scheme; the `svix-*` trio wins when
both are sent. Every malformed input is a Reason, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cachetools import TTLCache

from gateway.decision import Reason

MAX_ID_CHARS = 256
MAX_SIGNATURE_HEADER = 16_384
SIGNATURE_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class WebhookHeaders:
    id: str
    timestamp: str
    signature: str


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret; raises ValueError when it is not base64."""
    body = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not base64 after 'whsec_'") from exc


def read_headers(headers: Mapping[str, str]) -> WebhookHeaders | Reason:
    for prefix in ("svix-", "webhook-"):
        values = [headers.get(prefix + part) for part in ("id", "timestamp", "signature")]
        if any(v is not None for v in values):
            if not all(values):
                return Reason.WEBHOOK_HEADERS_MISSING
            msg_id, timestamp, signature = (v or "" for v in values)
            return WebhookHeaders(msg_id, timestamp, signature)
    return Reason.WEBHOOK_HEADERS_MISSING


def verify(
    headers: WebhookHeaders,
    body: bytes,
    secrets: Sequence[bytes],
    now: float,
    tolerance_s: float,
) -> Reason | None:
    """None when some secret signed exactly these bytes at an acceptable time."""
    msg_id, timestamp = headers.id, headers.timestamp
    if (
        len(msg_id) > MAX_ID_CHARS
        or not msg_id.isascii()
        or not msg_id.isprintable()
        or not timestamp.isascii()
        or not timestamp.isdigit()
        or len(timestamp) > 12
        or len(headers.signature) > MAX_SIGNATURE_HEADER
    ):
        return Reason.WEBHOOK_HEADERS_INVALID
    sent_at = int(timestamp)
    if now - sent_at > tolerance_s:
        return Reason.WEBHOOK_TIMESTAMP_TOO_OLD
    if sent_at - now > tolerance_s:
        return Reason.WEBHOOK_TIMESTAMP_TOO_NEW
    candidates = _v1_signatures(headers.signature)
    if not candidates:
        return Reason.WEBHOOK_SIGNATURE_INVALID
    signed = f"{msg_id}.{timestamp}.".encode() + body
    for secret in secrets:
        expected = hmac.new(secret, signed, hashlib.sha256).digest()
        # compare against every entry, without stopping early on a match
        matched = False
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
        if matched:
            return None
    return Reason.WEBHOOK_SIGNATURE_INVALID


def _v1_signatures(header: str) -> list[bytes]:
    out: list[bytes] = []
    for entry in header.split(" "):
        version, sep, encoded = entry.partition(",")
        if not sep or version != SIGNATURE_VERSION:
            continue  # other versions (v1a is ed25519) and junk are ignored
        try:
            out.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return out


def event_type(body: bytes) -> str:
    """The envelope's `type` (`user.created`, ...), or "unknown"; only after verification."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "unknown"
    kind = data.get("type") if isinstance(data, dict) else None
    if (
        isinstance(kind, str)
        and kind
        and len(kind) <= 100
        and kind.isascii()
        and kind.isprintable()
    ):
        return kind
    return "unknown"


class DeliveryRecord:
    """Ids the upstream accepted (2xx), remembered for `remember_s` in bounded memory.

    The Standard Webhooks spec makes the message id the idempotency key: a delivered id
    is answered 200 without forwarding again; a failed delivery is not recorded, so
    Svix's retry is forwarded. Ids being delivered right now are tracked too, so a retry
    racing the first attempt is told to come back rather than delivered twice.
    """

    def __init__(self, remember_s: float, max_ids: int = 100_000) -> None:
        self._delivered: TTLCache[str, bool] = TTLCache(max_ids, remember_s)
        self._in_flight: set[str] = set()

    def delivered(self, msg_id: str) -> bool:
        return msg_id in self._delivered

    def begin(self, msg_id: str) -> bool:
        """False when a delivery of this id is already under way."""
        if msg_id in self._in_flight:
            return False
        self._in_flight.add(msg_id)
        return True

    def finish(self, msg_id: str, accepted: bool) -> None:
        self._in_flight.discard(msg_id)
        if accepted:
            self._delivered[msg_id] = True
