"""The stand-in's users: Clerk `UserJSON` objects, seeded with the demo's people.

The Backend API's `GET /v1/users/{id}` and the `user.*` webhooks read and write the same
objects, so a profile change made by a test is what the next lookup returns and what the
webhook carries, as with Clerk.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

# The demo's people (anonymous needs no token): demo name -> (user id, role).
DEMO_USERS: dict[str, tuple[str, str]] = {
    "alice": ("user_2alice", "member"),
    "bob": ("user_2bob", "member"),
    "admin": ("user_2admin", "admin"),
}

# demo name -> (first name, last name); the username is the demo name.
_NAMES: dict[str, tuple[str, str]] = {
    "alice": ("Alice", "Liddell"),
    "bob": ("Bob", "Martin"),
    "admin": ("Ada", "Lovelace"),
}

USER_KINDS = ("user.created", "user.updated", "user.deleted")


def now_ms() -> int:
    return int(time.time() * 1000)


def seed_users(at_ms: int) -> dict[str, dict[str, Any]]:
    """alice, bob and admin as Clerk would return them, `public_metadata.role` included."""
    users: dict[str, dict[str, Any]] = {}
    for name, (user_id, role) in DEMO_USERS.items():
        first, last = _NAMES[name]
        users[user_id] = new_user(
            user_id,
            {
                "username": name,
                "first_name": first,
                "last_name": last,
                "email": f"{name}@example.com",
                "public_metadata": {"role": role},
            },
            at_ms,
        )
    return users


def new_user(user_id: str, fields: Mapping[str, Any], at_ms: int) -> dict[str, Any]:
    """A UserJSON with Clerk's keys; `fields` as for `apply_fields`."""
    email_id = "idn_" + user_id.removeprefix("user_")
    user: dict[str, Any] = {
        "id": user_id,
        "object": "user",
        "external_id": None,
        "username": None,
        "first_name": None,
        "last_name": None,
        "image_url": f"https://img.clerk.com/devclerk/{user_id}.png",
        "has_image": False,
        "primary_email_address_id": email_id,
        "primary_phone_number_id": None,
        "email_addresses": [_email(email_id, f"{user_id}@example.com")],
        "phone_numbers": [],
        "public_metadata": {},
        "private_metadata": {},
        "unsafe_metadata": {},
        "banned": False,
        "locked": False,
        "last_sign_in_at": None,
        "created_at": at_ms,
        "updated_at": at_ms,
    }
    apply_fields(user, fields, at_ms)
    user["created_at"] = user["updated_at"]
    return user


def apply_fields(user: dict[str, Any], fields: Mapping[str, Any], at_ms: int) -> None:
    """Change a user in place. `email` replaces the primary address; any other key is set
    as given (metadata objects are replaced whole, as Clerk's `PATCH /v1/users` does)."""
    for key, value in fields.items():
        if key == "email":
            _set_primary_email(user, str(value))
        else:
            user[key] = copy.deepcopy(value)
    # Strictly increasing, so a test sees an update even within one millisecond.
    user["updated_at"] = max(at_ms, int(user.get("updated_at") or 0) + 1)


def envelope(kind: str, data: Mapping[str, Any], at_ms: int) -> dict[str, Any]:
    """Clerk's webhook envelope around a user object (or a deletion stub)."""
    return {
        "data": copy.deepcopy(dict(data)),
        "object": "event",
        "type": kind,
        "timestamp": at_ms,
        "instance_id": "ins_devclerk",
    }


def deleted_stub(user_id: str) -> dict[str, Any]:
    return {"object": "user", "id": user_id, "deleted": True}


def stored_role(user: Mapping[str, Any] | None) -> str | None:
    """The role the session token's `metadata` carries (`{{user.public_metadata}}`)."""
    if user is None:
        return None
    metadata = user.get("public_metadata")
    role = metadata.get("role") if isinstance(metadata, Mapping) else None
    return role if isinstance(role, str) else None


def _email(email_id: str, address: str) -> dict[str, Any]:
    return {
        "id": email_id,
        "object": "email_address",
        "email_address": address,
        "verification": {"status": "verified", "strategy": "email_code"},
        "linked_to": [],
    }


def _set_primary_email(user: dict[str, Any], address: str) -> None:
    for entry in user["email_addresses"]:
        if entry["id"] == user["primary_email_address_id"]:
            entry["email_address"] = address
            return
    email_id = "idn_" + str(user["id"]).removeprefix("user_")
    user["email_addresses"].append(_email(email_id, address))
    user["primary_email_address_id"] = email_id
