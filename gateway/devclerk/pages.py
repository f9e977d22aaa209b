"""The stand-in's two HTML pages: plain forms, no JavaScript, every value escaped."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

_STYLE = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto}"


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def sign_in_page(
    people: Mapping[str, tuple[str, str]], redirect_url: str, signed_in_as: str | None
) -> str:
    """A form posting `user` (a demo name) and `redirect_url` back to `/sign-in`."""
    choices = "\n".join(
        f'<p><label><input type="radio" name="user" value="{escape(name)}"'
        f"{' checked' if i == 0 else ''}> {escape(name)} ({escape(role)})</label></p>"
        for i, (name, (_user_id, role)) in enumerate(people.items())
    )
    note = (
        f"<p>This browser is signed in as <b>{escape(signed_in_as)}</b>; "
        "signing in again starts a new session.</p>"
        if signed_in_as
        else ""
    )
    form = (
        f'<form method="post" action="/sign-in">\n{choices}\n'
        f'<input type="hidden" name="redirect_url" value="{escape(redirect_url)}">\n'
        '<p><button type="submit">Sign in</button></p>\n</form>'
    )
    return _page("Sign in (Clerk stand-in)", f"{note}\n{form}")


def signed_out_page() -> str:
    return _page(
        "Signed out",
        '<p>This browser has no active session. <a href="/sign-in">Sign in again</a>.</p>',
    )
