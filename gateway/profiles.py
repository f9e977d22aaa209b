"""The user's profile from Clerk's Backend API, as identity headers for the upstream.

A legacy app needs the signed-in user's email and name, which a session token does not
carry unless the instance customises it. `user_profile:` fetches `GET /v1/users/{id}` on a
user's first request and keeps the header block it yields per user:

- a fresh entry (younger than `ttl_s`) is a dict lookup on the request path;
- a stale one is still served while one background refresh runs (stale-while-revalidate),
  for at most `max_stale_s` past its ttl while refreshes fail;
- a user's first request waits for the lookup at most `lookup_timeout_s`; concurrent first
  requests share one call;
- `user.created`/`user.updated` webhooks (verified by the gateway) replace the entry from
  their payload, `user.deleted` drops it: a change reaches the upstream without a call.
  Svix delivers out of order and retries late: a user object older (`updated_at`) than the
  one held never replaces it, and a deleted user stays deleted (a tombstone, for as long as
  an entry could have lived) whatever arrives after, from a webhook or a fetch in flight;
- a 429 pauses every lookup until its Retry-After; an outage pauses lookups briefly; a
  failed user is not asked again for a while. None of it ever fails a request: the profile
  headers are then left out, counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from gateway.clerk.backend import BackendAPI
from gateway.identity import header_block, path_values
from gateway.model import ProfileSettings

log = logging.getLogger("clerk_gateway.profiles")

NOTHING: Final = b""  # a user with no profile headers (or whose lookup failed)
FAILURE_BACKOFF_S = 5.0  # every lookup pauses this long after an outage
FAILED_USER_S = 30.0  # a user whose lookup failed is not asked again for this long


class Entry:
    __slots__ = ("block", "fresh_until", "refreshing", "stale_until", "updated_at")

    def __init__(
        self, block: bytes, now: float, settings: ProfileSettings, updated_at: int
    ) -> None:
        self.block = block
        self.fresh_until = now + settings.ttl_s
        self.stale_until = self.fresh_until + settings.max_stale_s
        self.refreshing = False
        self.updated_at = updated_at  # Clerk's, in ms: which of two user objects is newer


def _updated_at(user: Mapping[str, Any]) -> int:
    value = user.get("updated_at")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def view(user: Mapping[str, Any]) -> dict[str, Any]:
    """The user object with the derived fields headers name: `email` (the primary address),
    `phone` (the primary number) and `name` (first and last name joined)."""
    out = dict(user)
    out["email"] = _primary(user, "email_addresses", "primary_email_address_id", "email_address")
    out["phone"] = _primary(user, "phone_numbers", "primary_phone_number_id", "phone_number")
    names = [user.get("first_name"), user.get("last_name")]
    out["name"] = " ".join(n for n in names if isinstance(n, str) and n) or None
    return out


def _primary(user: Mapping[str, Any], items: str, primary: str, field: str) -> Any:
    wanted = user.get(primary)
    for item in user.get(items) or ():
        if isinstance(item, Mapping) and item.get("id") == wanted:
            return item.get(field)
    return None


class Profiles:
    """Per-user profile header blocks, bounded, for one policy's `user_profile:`."""

    def __init__(
        self,
        settings: ProfileSettings,
        backend: BackendAPI,
        count: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.count = count
        self.clock = clock
        # oldest first out, in O(1) (see verifier.py)
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._failed: OrderedDict[str, float] = OrderedDict()
        self._deleted: OrderedDict[str, float] = OrderedDict()  # tombstones: user id -> until when
        self._paused_until = 0.0
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- the request path -------------------------------------------------------------------

    def cached(self, user_id: str, *, after_lookup: bool = False) -> bytes | None:
        """The user's header block when known (a stale one starts a refresh), NOTHING while
        lookups for the user are paused, None when the request should wait for a lookup.
        `after_lookup`: the request just waited for this user's lookup (not a cache hit)."""
        entry = self._entries.get(user_id)
        now = self.clock()
        if entry is not None:
            if now < entry.fresh_until:
                if not after_lookup:
                    self.count("hit")
                return entry.block
            if now < entry.stale_until:
                self.count("stale")
                if not entry.refreshing and now >= self._paused_until:
                    entry.refreshing = True
                    self._background(user_id)
                return entry.block
            del self._entries[user_id]
        if (
            now < self._paused_until
            or self._failed.get(user_id, 0.0) > now
            or self._deleted.get(user_id, 0.0) > now
        ):
            if not after_lookup:
                self.count("skipped")
            return NOTHING
        return None

    async def lookup(self, user_id: str) -> bytes:
        """The user's block, waiting at most `lookup_timeout_s` (NOTHING on failure); the
        lookup itself goes on when the wait gives up, so the next request has it."""
        pending = self._inflight.get(user_id)
        if pending is None:
            pending = self._start(user_id)
        try:
            async with asyncio.timeout(self.settings.lookup_timeout_s):
                return await asyncio.shield(pending)
        except TimeoutError:
            self.count("timeout")
            return NOTHING

    # ---- webhooks ---------------------------------------------------------------------------

    def updated(self, user: Mapping[str, Any]) -> None:
        """A verified `user.created`/`user.updated`: its payload is the user object."""
        user_id = user.get("id")
        if isinstance(user_id, str) and user_id:
            self._store(user_id, user)
            self._failed.pop(user_id, None)

    def deleted(self, user_id: str) -> None:
        """A verified `user.deleted`: the entry goes, and nothing brings it back while a
        token of the user could still be live or an entry fetched before could linger."""
        self._entries.pop(user_id, None)
        deleted = self._deleted
        now = self.clock()
        if len(deleted) >= self.settings.max_users:
            for stale in [u for u, until in deleted.items() if until <= now]:
                del deleted[stale]
            if len(deleted) >= self.settings.max_users:
                deleted.popitem(last=False)
        deleted[user_id] = now + self.settings.ttl_s + self.settings.max_stale_s

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- lookups ----------------------------------------------------------------------------

    def _start(self, user_id: str) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[user_id] = future
        self._track(asyncio.create_task(self._fetch(user_id, future)))
        return future

    def _background(self, user_id: str) -> None:
        if user_id not in self._inflight:
            self._start(user_id)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, user_id: str, future: asyncio.Future[bytes]) -> None:
        block = NOTHING
        try:
            answer = await self.backend.user(user_id)
            now = self.clock()
            if answer.status == 200 and isinstance(answer.body, Mapping):
                self.count("fetched")
                block = self._store(user_id, answer.body)
            elif answer.status == 404:
                self.count("not-found")
                self._entries.pop(user_id, None)
                self._failed[user_id] = now + FAILED_USER_S
            else:
                self._failure(user_id, answer.status, answer.retry_after_s, now)
                entry = self._entries.get(user_id)
                if entry is not None:
                    entry.refreshing = False  # a stale entry is served, and retried later
                    block = entry.block
        finally:
            self._inflight.pop(user_id, None)
            if not future.done():
                future.set_result(block)

    def _failure(self, user_id: str, status: int, retry_after: float | None, now: float) -> None:
        if status == 429:
            self.count("rate-limited")
            pause = retry_after if retry_after is not None else FAILURE_BACKOFF_S
        else:
            self.count("error")
            pause = retry_after if retry_after is not None else FAILURE_BACKOFF_S
        self._paused_until = max(self._paused_until, now + pause)
        if len(self._failed) >= self.settings.max_users:
            self._failed.clear()
        self._failed[user_id] = now + FAILED_USER_S
        log.warning(
            "user profile lookup failed; profile headers left out",
            extra={"status": status or None, "paused_s": round(pause, 3)},
        )

    def _store(self, user_id: str, user: Mapping[str, Any]) -> bytes:
        """Keep the user's block, unless the user was deleted or a newer object is held
        (then that one's block is what the request gets)."""
        now = self.clock()
        if self._deleted.get(user_id, 0.0) > now:
            return NOTHING
        entries = self._entries
        updated_at = _updated_at(user)
        held = entries.get(user_id)
        if held is not None and held.updated_at > updated_at:
            return held.block
        block = header_block(path_values(self.settings.headers, view(user)))
        if held is None and len(entries) >= self.settings.max_users:
            entries.popitem(last=False)  # the oldest entry makes room
        entries[user_id] = Entry(block, now, self.settings, updated_at)
        return block
