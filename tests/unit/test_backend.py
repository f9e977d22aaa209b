"""The budget of handshake nonce resolutions: per client, for everyone, and Clerk's 429."""

from __future__ import annotations

from gateway.clerk.backend import ALL_BURST, PER_CLIENT_BURST, PER_CLIENT_RATE, Budget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_has_a_burst_then_one_a_second() -> None:
    clock = Clock()
    budget = Budget(clock)
    granted = sum(budget.allows("203.0.113.7") for _ in range(50))
    assert granted == PER_CLIENT_BURST
    assert not budget.allows("203.0.113.7")
    clock.now += 1.0
    assert sum(budget.allows("203.0.113.7") for _ in range(50)) == PER_CLIENT_RATE
    assert budget.allows("198.51.100.1")  # another client is not held back by the first


def test_browsers_behind_a_proxy_that_names_none_share_only_the_overall_budget() -> None:
    budget = Budget(Clock())
    granted = sum(budget.allows("") for _ in range(1000))
    assert granted == ALL_BURST


def test_all_clients_together_have_a_larger_budget() -> None:
    clock = Clock()
    budget = Budget(clock)
    granted = sum(budget.allows(f"10.0.{i // 256}.{i % 256}") for i in range(1000))
    assert granted == ALL_BURST


def test_a_429_pauses_everyone_for_its_retry_after() -> None:
    clock = Clock()
    budget = Budget(clock)
    budget.pause(30.0)
    assert not budget.allows("203.0.113.7")
    clock.now += 29.0
    assert not budget.allows("203.0.113.7")
    clock.now += 1.5
    assert budget.allows("203.0.113.7")


def test_an_ipv6_client_is_its_slash_64() -> None:
    budget = Budget(Clock())
    addresses = [f"2001:db8:1:2::{i:x}" for i in range(1, 200)]
    assert sum(budget.allows(a) for a in addresses) == PER_CLIENT_BURST
    assert budget.allows("2001:db8:1:3::1")  # the next /64 is another client
