"""The profile cache against Svix's delivery order: verified user.* webhooks that arrive
late or out of order never bring back an older or a deleted user."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.integration.conftest import Running
from tests.integration.test_identity import (  # noqa: F401  (fixtures)
    alice,
    key_file,
    policy_edit,
    seen,
)


async def deliver(gw: Running, event: dict[str, Any]) -> int:
    """A Svix delivery (or retry) of `event`, signed now."""
    headers, body = gw.clerk.signed_webhook(event)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.base}/api/webhooks/clerk", data=body, headers=headers) as r,
    ):
        return r.status


async def test_an_older_user_updated_does_not_replace_a_newer_one(gw: Running) -> None:
    token = alice(gw)
    await gw.get("/dashboard", token)
    older = gw.clerk.update_user("user_2alice", email="v1@example.com")
    newer = gw.clerk.update_user("user_2alice", email="v2@example.com")
    assert await deliver(gw, newer) == 200
    assert await deliver(gw, older) == 200  # Svix retries a failed delivery later
    await gw.get("/dashboard", token)
    assert seen(gw)["X-Clerk-User-Email"] == "v2@example.com"


async def test_a_late_user_updated_does_not_bring_back_a_deleted_user(gw: Running) -> None:
    token = alice(gw)
    await gw.get("/dashboard", token)
    older = gw.clerk.update_user("user_2alice", first_name="Old", email="old@example.com")
    assert await deliver(gw, gw.clerk.user_event("user.deleted", "user_2alice")) == 200
    assert await deliver(gw, older) == 200
    r = await gw.get("/dashboard", token)  # a token minted before the deletion, still live
    assert r.status == 200
    assert "X-Clerk-User-Email" not in seen(gw)
