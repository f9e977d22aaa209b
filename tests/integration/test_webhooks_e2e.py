"""Webhook routes end to end: verified at the edge, delivered once to the upstream."""

from __future__ import annotations

import io
import json
import time

from aiohttp import web

from tests.integration.conftest import Running, raw_request


def webhook_requests(gw: Running) -> list[dict[str, object]]:
    return [r for r in gw.upstream.requests if r["raw_path"] == "/api/webhooks/clerk"]


async def post_signed(gw: Running, event: dict[str, object], **kw: object) -> web.Response:
    headers, body = gw.clerk.signed_webhook(event, **kw)  # type: ignore[arg-type]
    return await gw.request("POST", "/api/webhooks/clerk", headers=headers, data=body)  # type: ignore[return-value]


async def test_a_signed_webhook_is_forwarded_with_verified_headers(gw: Running) -> None:
    event = gw.clerk.user_event("user.created", first_name="Carol")
    headers, body = gw.clerk.signed_webhook(event)
    r = await gw.request(
        "POST",
        "/api/webhooks/clerk",
        headers={**headers, "X-Clerk-Webhook-Event": "forged"},
        data=body,
    )
    assert r.status == 200
    (delivered,) = webhook_requests(gw)
    seen = {k.lower(): v for k, v in delivered["headers"]}  # type: ignore[union-attr]
    assert seen["x-clerk-webhook-verified"] == "true"
    assert seen["x-clerk-webhook-event"] == "user.created"
    assert seen["svix-id"] == headers["svix-id"]
    assert delivered["body"] == body.decode()  # the exact bytes, never re-serialised


async def test_unsigned_and_forged_webhooks_are_400(gw: Running) -> None:
    r = await gw.request("POST", "/api/webhooks/clerk", data=b"{}")
    assert (r.status, await r.json()) == (
        400,
        {"error": "bad_request", "reason": "webhook-headers-missing"},
    )
    headers, body = gw.clerk.signed_webhook(gw.clerk.user_event("user.created"))
    r = await gw.request(
        "POST",
        "/api/webhooks/clerk",
        headers=headers,
        data=body.replace(b"user.created", b"user.deleted"),
    )
    assert (r.status, (await r.json())["reason"]) == (400, "webhook-signature-invalid")
    r = await post_signed(gw, gw.clerk.user_event("user.created"), timestamp=int(time.time()) - 400)
    assert (r.status, (await r.json())["reason"]) == (400, "webhook-timestamp-too-old")
    r = await post_signed(gw, gw.clerk.user_event("user.created"), timestamp=int(time.time()) + 400)
    assert (r.status, (await r.json())["reason"]) == (400, "webhook-timestamp-too-new")
    assert webhook_requests(gw) == []


async def test_malformed_headers_are_400_end_to_end(gw: Running) -> None:
    headers, body = gw.clerk.signed_webhook(gw.clerk.user_event("user.created"))
    for bad in (
        {"svix-signature": headers["svix-signature"].replace(",", "")},
        {"svix-signature": "v1,@@@"},
        {"svix-timestamp": "soon"},
        {"svix-id": ""},
        {"svix-signature": "v1," + "A" * 3000},
    ):
        r = await gw.request("POST", "/api/webhooks/clerk", headers={**headers, **bad}, data=body)
        assert r.status == 400, bad
    assert webhook_requests(gw) == []


async def test_a_replayed_delivery_is_not_forwarded_twice(gw: Running) -> None:
    event = gw.clerk.user_event("user.created")
    headers, body = gw.clerk.signed_webhook(event)
    for _ in range(3):
        r = await gw.request("POST", "/api/webhooks/clerk", headers=headers, data=body)
        assert r.status == 200
    assert len(webhook_requests(gw)) == 1
    assert (await r.json())["reason"] == "webhook-already-delivered"
    forged = {**headers, "svix-signature": "v1,AAAA"}
    r = await gw.request("POST", "/api/webhooks/clerk", headers=forged, data=body)
    assert r.status == 400  # the signature is checked before the replay record


async def test_a_failed_delivery_is_forwarded_again_on_retry(gw: Running) -> None:
    headers, body = gw.clerk.signed_webhook(gw.clerk.user_event("user.updated"))
    gw.upstream.webhook_status = 500
    r = await gw.request("POST", "/api/webhooks/clerk", headers=headers, data=body)
    assert r.status == 500
    gw.upstream.webhook_status = 200
    r = await gw.request("POST", "/api/webhooks/clerk", headers=headers, data=body)
    assert r.status == 200
    r = await gw.request("POST", "/api/webhooks/clerk", headers=headers, data=body)
    assert r.status == 200
    assert len(webhook_requests(gw)) == 2


async def test_an_oversized_body_is_413_and_never_reaches_the_upstream(gw: Running) -> None:
    event = gw.clerk.user_event("user.created", blob="x" * 70_000)
    headers, body = gw.clerk.signed_webhook(event)
    r = await gw.request("POST", "/api/webhooks/clerk", headers=headers, data=body)
    assert (r.status, (await r.json())["reason"]) == (413, "webhook-body-too-large")

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"x" * 8192

    r = await gw.request("POST", "/api/webhooks/clerk", headers=headers, data=chunks())
    assert r.status == 413  # chunked, no Content-Length: cut off while reading
    assert webhook_requests(gw) == []


async def test_webhook_metrics_and_logs_name_the_event_not_the_body(gw: Running) -> None:
    event = gw.clerk.user_event("user.created", first_name="Secretive")
    stream = io.StringIO()
    gw.gateway.access_log.stream = stream
    r = await post_signed(gw, event)
    assert r.status == 200
    gw.gateway.access_log.flush()
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["webhook_event"] == "user.created"
    assert entry["webhook_id"].startswith("msg_")
    assert "Secretive" not in line
    text = await (await gw.http.get(gw.admin + "/metrics")).text()
    assert 'clerk_gateway_webhooks_total{event_type="user.created",outcome="delivered"} 1.0' in text


async def test_webhook_get_is_not_the_webhook_route(gw: Running) -> None:
    status, _, _ = await raw_request(
        gw.port, b"GET /api/webhooks/clerk HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status == 401  # methods: [POST]; a GET falls to the default (protected)


async def test_a_large_webhook_within_its_limit_is_delivered(gw: Running) -> None:
    text = gw.policy_path.read_text().replace("max_body_bytes: 65536", "max_body_bytes: 2097152")
    gw.policy_path.write_text(text)
    assert await gw.gateway.reload()
    event = gw.clerk.user_event("user.updated", blob="y" * 1_000_000)
    headers, body = gw.clerk.signed_webhook(event)

    async def slowly():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 50_000):
            yield body[i : i + 50_000]

    r = await gw.request("POST", "/api/webhooks/clerk", headers=headers, data=slowly())
    assert r.status == 200
    (delivered,) = webhook_requests(gw)
    assert len(delivered["body"]) == len(body)  # type: ignore[arg-type]
