"""A "legacy" app that knows nothing about Clerk: it trusts the gateway's identity headers.

It shows what an upstream does behind clerk-gateway:
- reads `X-Clerk-User-Id` / `X-Clerk-Role` (which no client can forge: the gateway strips
  every client-sent `X-Clerk-*` header) to decide who may delete a post;
- keeps its own users table in sync from Clerk's `user.*` webhooks, which reach it only
  after the gateway verified the Svix signature (`X-Clerk-Webhook-Verified: true`).

Run it alone with `python examples/posts_app.py --port 3000`; `clerk-gateway demo` runs it
for you.
"""

from __future__ import annotations

import argparse
import html
import json
import sqlite3
from pathlib import Path
from typing import Any

from aiohttp import web

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, email TEXT, first_name TEXT, last_name TEXT, updated_at INTEGER
);
CREATE TABLE IF NOT EXISTS posts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, author_id TEXT NOT NULL, body TEXT NOT NULL
);
"""


class Store:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def upsert_user(self, user: dict[str, Any]) -> None:
        emails = user.get("email_addresses") or []
        primary = user.get("primary_email_address_id")
        email = next((e.get("email_address") for e in emails if e.get("id") == primary), None)
        self.db.execute(
            "INSERT INTO users (id, email, first_name, last_name, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET email=excluded.email, first_name=excluded.first_name, "
            "last_name=excluded.last_name, updated_at=excluded.updated_at",
            (
                user["id"],
                email,
                user.get("first_name"),
                user.get("last_name"),
                user.get("updated_at"),
            ),
        )
        self.db.commit()

    def delete_user(self, user_id: str) -> None:
        self.db.execute("DELETE FROM users WHERE id = ?", (user_id,))
        self.db.commit()

    def users(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT id, email, first_name, last_name FROM users ORDER BY id")
        return [dict(zip(("id", "email", "first_name", "last_name"), r, strict=True)) for r in rows]

    def add_post(self, author: str, body: str) -> int:
        cur = self.db.execute("INSERT INTO posts (author_id, body) VALUES (?, ?)", (author, body))
        self.db.commit()
        return int(cur.lastrowid or 0)

    def post(self, post_id: int) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT id, author_id, body FROM posts WHERE id = ?", (post_id,)
        ).fetchone()
        return dict(zip(("id", "author_id", "body"), row, strict=True)) if row else None

    def posts(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT id, author_id, body FROM posts ORDER BY id")
        return [dict(zip(("id", "author_id", "body"), r, strict=True)) for r in rows]

    def delete_post(self, post_id: int) -> None:
        self.db.execute("DELETE FROM posts WHERE id = ?", (post_id,))
        self.db.commit()


STORE = web.AppKey("store", Store)


def identity(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower().startswith("x-clerk-")}


def page(title: str, body: str) -> web.Response:
    return web.Response(
        text=f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>{body}",
        content_type="text/html",
    )


async def home(request: web.Request) -> web.Response:
    user = request.headers.get("X-Clerk-User-Id")
    who = f"signed in as {html.escape(user)}" if user else "not signed in"
    return page("Posts (a legacy app)", f"<p>You are {who}.</p>")


async def sign_in(request: web.Request) -> web.Response:
    back = html.escape(request.query.get("redirect_url", "/"))
    return page("Sign in", f"<p>This is where Clerk's sign-in would be; then back to {back}.</p>")


async def unauthorized(request: web.Request) -> web.Response:
    return page("Not allowed", "<p>You are signed in, but this page needs another role.</p>")


async def dashboard(request: web.Request) -> web.Response:
    user = html.escape(request.headers.get("X-Clerk-User-Id", "?"))
    return page("Dashboard", f"<p>Welcome, {user}.</p>")


async def admin(request: web.Request) -> web.Response:
    return page(
        "Admin", f"<p>Hello admin {html.escape(request.headers.get('X-Clerk-User-Id', '?'))}.</p>"
    )


async def me(request: web.Request) -> web.Response:
    return web.json_response({"identity": identity(request), "path": request.raw_path})


async def list_posts(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].posts())


async def create_post(request: web.Request) -> web.Response:
    author = request.headers.get("X-Clerk-User-Id")
    if not author:
        return web.json_response({"error": "no identity"}, status=401)
    data = await request.json() if request.can_read_body else {}
    body = str(data.get("body", "")) if isinstance(data, dict) else ""
    post_id = request.app[STORE].add_post(author, body or "(empty)")
    return web.json_response({"id": post_id, "author_id": author}, status=201)


async def delete_post(request: web.Request) -> web.Response:
    store = request.app[STORE]
    post = store.post(int(request.match_info["post_id"]))
    if post is None:
        return web.json_response({"error": "not found"}, status=404)
    user = request.headers.get("X-Clerk-User-Id")
    roles = (request.headers.get("X-Clerk-Role") or "").split(",")
    # The app's own rule, from identity headers it can trust: the author or an admin.
    if user != post["author_id"] and "admin" not in roles:
        return web.json_response({"error": "only the author or an admin may delete"}, status=403)
    store.delete_post(post["id"])
    return web.json_response({"deleted": post["id"]})


async def list_users(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].users())


async def clerk_webhook(request: web.Request) -> web.Response:
    # The gateway forwards only verified, fresh, first deliveries; it says so in a header
    # no client can set. An app not behind the gateway would verify Svix itself here.
    if request.headers.get("X-Clerk-Webhook-Verified") != "true":
        return web.json_response({"error": "unverified webhook"}, status=400)
    event = json.loads(await request.read())
    store = request.app[STORE]
    kind, data = event.get("type"), event.get("data") or {}
    if kind in ("user.created", "user.updated"):
        store.upsert_user(data)
    elif kind == "user.deleted" and data.get("id"):
        store.delete_user(data["id"])
    return web.json_response({"received": kind})


def make_app(db_path: str = ":memory:") -> web.Application:
    app = web.Application()
    app[STORE] = Store(db_path)

    async def close_store(app: web.Application) -> None:
        app[STORE].close()

    app.on_cleanup.append(close_store)
    app.router.add_get("/", home)
    app.router.add_get("/sign-in", sign_in)
    app.router.add_get("/unauthorized", unauthorized)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/admin", admin)
    app.router.add_get("/api/protected/me", me)
    app.router.add_get("/api/posts", list_posts)
    app.router.add_post("/api/posts", create_post)
    app.router.add_delete("/api/posts/{post_id:[0-9]+}", delete_post)
    app.router.add_get("/api/admin/users", list_users)
    app.router.add_post("/api/webhooks/clerk", clerk_webhook)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--db", default=str(Path("demo-data") / "posts.sqlite3"))
    args = parser.parse_args()
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    web.run_app(make_app(args.db), host="127.0.0.1", port=args.port)
