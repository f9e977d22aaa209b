"""Svix / Standard Webhooks verification: reference vector 23, the official svix library."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from svix.webhooks import Webhook

from gateway.decision import Reason
from gateway.webhooks import (
    DeliveryRecord,
    WebhookHeaders,
    event_type,
    read_headers,
    secret_bytes,
    verify,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
KEYS = (secret_bytes(SECRET),)
# the caps as the contract states them (not imported: a changed cap must fail a test)
ID_CAP = 256
SIGNATURE_CAP = 16_384


def headers(signature: str = SIGNATURE, msg_id: str = MSG_ID, ts: str = str(TS)) -> WebhookHeaders:
    return WebhookHeaders(msg_id, ts, signature)


VECTOR_23 = [
    # (description, headers, body, now, expected)
    ("the reference signature", headers(), BODY, TS, None),
    ("299 s later", headers(), BODY, TS + 299, None),
    ("299 s earlier", headers(), BODY, TS - 299, None),
    ("exactly the tolerance later", headers(), BODY, TS + 300, None),
    ("exactly the tolerance earlier", headers(), BODY, TS - 300, None),
    ("301 s later is too old", headers(), BODY, TS + 301, Reason.WEBHOOK_TIMESTAMP_TOO_OLD),
    ("301 s earlier is too new", headers(), BODY, TS - 301, Reason.WEBHOOK_TIMESTAMP_TOO_NEW),
    ("a v1a entry is ignored", headers(f"v1a,xxx {SIGNATURE}"), BODY, TS, None),
    (
        "one body byte changed",
        headers(),
        BODY.replace(b"4", b"5", 1),
        TS,
        Reason.WEBHOOK_SIGNATURE_INVALID,
    ),
    ("another id", headers(msg_id="msg_other"), BODY, TS, Reason.WEBHOOK_SIGNATURE_INVALID),
    (
        "re-serialised JSON is not the signed bytes",
        headers(),
        b'{"test":2432232314}',
        TS,
        Reason.WEBHOOK_SIGNATURE_INVALID,
    ),
    (
        "rotation: the good signature first, a bogus entry after it",
        headers(f"{SIGNATURE} v1,{base64.b64encode(b'x' * 32).decode()}"),
        BODY,
        TS,
        None,
    ),
    (
        "an entry that is not base64 before the good one",
        headers(f"v1,!!! {SIGNATURE}"),
        BODY,
        TS,
        None,
    ),
    (
        "the right HMAC under another version",
        headers(SIGNATURE.replace("v1,", "v2,")),
        BODY,
        TS,
        Reason.WEBHOOK_SIGNATURE_INVALID,
    ),
    (
        "the right HMAC with a stray character",
        headers(SIGNATURE + "!"),
        BODY,
        TS,
        Reason.WEBHOOK_SIGNATURE_INVALID,
    ),
    (
        "entries separated by a tab, not a space",
        headers(f"v1,AAAA\t{SIGNATURE}"),
        BODY,
        TS,
        Reason.WEBHOOK_SIGNATURE_INVALID,
    ),
    (
        "several entries, the good one last",
        headers(f"v1,AAAA v1,{base64.b64encode(b'x' * 32).decode()} {SIGNATURE}"),
        BODY,
        TS,
        None,
    ),
]


@pytest.mark.parametrize(
    ("description", "hdrs", "body", "now", "expected"), VECTOR_23, ids=[v[0] for v in VECTOR_23]
)
def test_vector_23(
    description: str, hdrs: WebhookHeaders, body: bytes, now: int, expected: Reason | None
) -> None:
    assert verify(hdrs, body, KEYS, now, 300) == expected, description


MALFORMED = [
    ("entry without a comma", headers("v1g0hM9SsE+OTPJTGt"), Reason.WEBHOOK_SIGNATURE_INVALID),
    ("bad base64", headers("v1,!!!notbase64!!!"), Reason.WEBHOOK_SIGNATURE_INVALID),
    ("empty signature", headers(""), Reason.WEBHOOK_SIGNATURE_INVALID),
    ("only other versions", headers("v2,abc v1a,def"), Reason.WEBHOOK_SIGNATURE_INVALID),
    ("non-integer timestamp", headers(ts="1614265330.5"), Reason.WEBHOOK_HEADERS_INVALID),
    ("negative timestamp", headers(ts="-1"), Reason.WEBHOOK_HEADERS_INVALID),
    ("empty timestamp", headers(ts=""), Reason.WEBHOOK_HEADERS_INVALID),
    ("non-ASCII digits", headers(ts="１６１４２６５３３０"), Reason.WEBHOOK_HEADERS_INVALID),
    ("huge timestamp", headers(ts="9" * 40), Reason.WEBHOOK_HEADERS_INVALID),
    ("100 KB signature header", headers("v1," + "A" * 100_000), Reason.WEBHOOK_HEADERS_INVALID),
    ("100 KB of entries", headers("v1,AAAA " * 12_500), Reason.WEBHOOK_HEADERS_INVALID),
    ("control character in the id", headers(msg_id="msg\n1"), Reason.WEBHOOK_HEADERS_INVALID),
    ("a non-ASCII id", headers(msg_id="msg_\u00e9"), Reason.WEBHOOK_HEADERS_INVALID),
    (
        "an id at the cap is read",
        headers(msg_id="m" * ID_CAP),
        Reason.WEBHOOK_SIGNATURE_INVALID,
    ),
    (
        "an id one past the cap",
        headers(msg_id="m" * (ID_CAP + 1)),
        Reason.WEBHOOK_HEADERS_INVALID,
    ),
    (
        "a twelve-digit timestamp is read",
        headers(ts="1" + "0" * 11),
        Reason.WEBHOOK_TIMESTAMP_TOO_NEW,
    ),
    ("a thirteen-digit timestamp", headers(ts="1" + "0" * 12), Reason.WEBHOOK_HEADERS_INVALID),
    (
        "a signature header at the cap is read",
        headers(("v1,AAAA " * 2048)[:SIGNATURE_CAP]),
        Reason.WEBHOOK_SIGNATURE_INVALID,
    ),
    (
        "a signature header one past the cap",
        headers(("v1,AAAA " * 2048)[:SIGNATURE_CAP] + "A"),
        Reason.WEBHOOK_HEADERS_INVALID,
    ),
]


@pytest.mark.parametrize(
    ("description", "hdrs", "expected"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_headers_are_failures_not_exceptions(
    description: str, hdrs: WebhookHeaders, expected: Reason
) -> None:
    assert verify(hdrs, BODY, KEYS, TS, 300) == expected, description


@pytest.mark.parametrize(
    ("description", "sent", "expected"),
    [
        (
            "svix names",
            {"svix-id": "a", "svix-timestamp": "1", "svix-signature": "s"},
            WebhookHeaders("a", "1", "s"),
        ),
        (
            "standard webhook names",
            {"webhook-id": "a", "webhook-timestamp": "1", "webhook-signature": "s"},
            WebhookHeaders("a", "1", "s"),
        ),
        (
            "svix wins when both are sent",
            {
                "svix-id": "a",
                "svix-timestamp": "1",
                "svix-signature": "s",
                "webhook-id": "b",
                "webhook-timestamp": "2",
                "webhook-signature": "t",
            },
            WebhookHeaders("a", "1", "s"),
        ),
        (
            "missing id",
            {"svix-timestamp": "1", "svix-signature": "s"},
            Reason.WEBHOOK_HEADERS_MISSING,
        ),
        (
            "empty signature header",
            {"svix-id": "a", "svix-timestamp": "1", "svix-signature": ""},
            Reason.WEBHOOK_HEADERS_MISSING,
        ),
        ("nothing", {}, Reason.WEBHOOK_HEADERS_MISSING),
    ],
)
def test_read_headers(description: str, sent: dict[str, str], expected: object) -> None:
    assert read_headers(sent) == expected, description


def test_signatures_from_the_official_svix_library() -> None:
    wh = Webhook(SECRET)
    now = datetime.now(tz=UTC)
    body = '{"type":"user.created","data":{"id":"user_1"}}'
    signature = wh.sign("msg_svix_1", now, body)
    hdrs = WebhookHeaders("msg_svix_1", str(int(now.timestamp())), signature)
    assert verify(hdrs, body.encode(), KEYS, now.timestamp(), 300) is None
    tampered = body.replace("user_1", "user_2").encode()
    assert verify(hdrs, tampered, KEYS, now.timestamp(), 300) is Reason.WEBHOOK_SIGNATURE_INVALID
    # and the library agrees with us about the reference vector
    assert (
        Webhook(SECRET).sign(MSG_ID, datetime.fromtimestamp(TS, tz=UTC), BODY.decode()) == SIGNATURE
    )


def test_rotation_accepts_either_secret() -> None:
    old, new = SECRET, "whsec_" + base64.b64encode(b"n" * 32).decode()
    keys = (secret_bytes(old), secret_bytes(new))
    now = datetime.fromtimestamp(TS, tz=UTC)
    for secret in (old, new):
        sig = Webhook(secret).sign(MSG_ID, now, BODY.decode())
        assert verify(headers(sig), BODY, keys, TS, 300) is None
    other = Webhook("whsec_" + base64.b64encode(b"o" * 32).decode()).sign(
        MSG_ID, now, BODY.decode()
    )
    assert verify(headers(other), BODY, keys, TS, 300) is Reason.WEBHOOK_SIGNATURE_INVALID


SECRETS = [
    # (description, secret, HMAC key)
    ("the reference secret", SECRET, base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
    ("padding added when missing (two)", "whsec_QQ", b"A"),
    ("padding added when missing (one)", "whsec_QUI", b"AB"),
    ("padding already there", "whsec_QQ==", b"A"),
    ("no prefix", "QUI=", b"AB"),
]


@pytest.mark.parametrize(("description", "secret", "key"), SECRETS, ids=[c[0] for c in SECRETS])
def test_secret_bytes(description: str, secret: str, key: bytes) -> None:
    assert secret_bytes(secret) == key, description


@pytest.mark.parametrize("secret", ["whsec_QQ!!", "whsec_Q Q", "whsec_QUI==="])
def test_a_secret_that_is_not_base64_is_refused(secret: str) -> None:
    with pytest.raises(ValueError) as refused:  # noqa: PT011
        secret_bytes(secret)
    assert str(refused.value) == "webhook secret is not base64 after 'whsec_'"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"type":"' + b"t" * 100 + b'"}', "t" * 100),
        (b'{"type":"' + b"t" * 101 + b'"}', "unknown"),
        (b'{"type":""}', "unknown"),
        (b'{"type":"a\\u0000b"}', "unknown"),
        (b'{"type":"caf\\u00e9"}', "unknown"),
        (b'{"type":"user.created"}', "user.created"),
        (b"not json", "unknown"),
        (b'{"type":3}', "unknown"),
        (b'["x"]', "unknown"),
    ],
)
def test_event_type(body: bytes, expected: str) -> None:
    assert event_type(body) == expected


def test_delivery_record() -> None:
    record = DeliveryRecord(remember_s=900)
    assert record.begin("msg_1")
    assert not record.begin("msg_1")  # a racing retry waits
    record.finish("msg_1", accepted=False)
    assert not record.delivered("msg_1")  # failed deliveries are retried
    assert record.begin("msg_1")
    record.finish("msg_1", accepted=True)
    assert record.delivered("msg_1")


def test_the_delivery_record_is_bounded() -> None:
    record = DeliveryRecord(remember_s=900)
    for i in range(100_001):
        record.finish(f"msg_{i}", accepted=True)
    assert not record.delivered("msg_0")  # the oldest made room
    assert record.delivered("msg_1")
    assert record.delivered("msg_100000")
