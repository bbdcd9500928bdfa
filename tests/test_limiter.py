"""Tests for the session counter and the failed-login throttle in ``mailkeep.server.limiter``."""

from __future__ import annotations

import pytest

from mailkeep.server.limiter import ConnectionLimiter, LoginThrottle

CLIENT = "192.0.2.1"
OTHER = "192.0.2.2"


class TestConnectionLimiter:
    def test_sessions_below_limits__are_counted(self):
        limiter = ConnectionLimiter(max_total=10, max_per_client=5)
        assert limiter.acquire(CLIENT) is None
        assert limiter.acquire(CLIENT) is None
        assert limiter.total == 2
        assert limiter.per_client[CLIENT] == 2

    def test_total_limit_reached__rejects_with_total(self):
        limiter = ConnectionLimiter(max_total=2, max_per_client=5)
        limiter.acquire(CLIENT)
        limiter.acquire(OTHER)
        assert limiter.acquire("192.0.2.3") == "total"

    def test_per_client_limit_reached__rejects_with_client(self):
        limiter = ConnectionLimiter(max_total=10, max_per_client=2)
        limiter.acquire(CLIENT)
        limiter.acquire(CLIENT)
        assert limiter.acquire(CLIENT) == "client"

    def test_per_client_limit__leaves_other_clients_alone(self):
        limiter = ConnectionLimiter(max_total=10, max_per_client=1)
        limiter.acquire(CLIENT)
        assert limiter.acquire(OTHER) is None

    def test_rejected_session__is_not_counted(self):
        limiter = ConnectionLimiter(max_total=10, max_per_client=1)
        limiter.acquire(CLIENT)
        limiter.acquire(CLIENT)
        assert limiter.total == 1
        assert limiter.per_client[CLIENT] == 1

    def test_release__makes_room_for_new_session(self):
        limiter = ConnectionLimiter(max_total=1, max_per_client=1)
        limiter.acquire(CLIENT)
        limiter.release(CLIENT)
        assert limiter.acquire(CLIENT) is None

    def test_release_of_last_session__forgets_client(self):
        limiter = ConnectionLimiter(max_total=10, max_per_client=5)
        limiter.acquire(CLIENT)
        limiter.release(CLIENT)
        assert CLIENT not in limiter.per_client
        assert limiter.total == 0

    def test_release_of_one_session__keeps_other(self):
        limiter = ConnectionLimiter(max_total=10, max_per_client=5)
        limiter.acquire(CLIENT)
        limiter.acquire(CLIENT)
        limiter.release(CLIENT)
        assert limiter.per_client[CLIENT] == 1
        assert limiter.total == 1

    def test_zero_limits__mean_unlimited(self):
        limiter = ConnectionLimiter(max_total=0, max_per_client=0)
        results = [limiter.acquire(CLIENT) for _ in range(1000)]
        assert results == [None] * 1000


class TestLoginThrottle:
    def test_each_failure__adds_one_delay(self):
        throttle = LoginThrottle(delay=1.0, max_failures=0, lockout=900.0)
        delays = [throttle.failed(CLIENT, now=100.0 + i) for i in range(3)]
        assert delays == [1.0, 2.0, 3.0]

    def test_growing_delay__is_capped_at_ten_delays(self):
        throttle = LoginThrottle(delay=0.5, max_failures=0, lockout=900.0)
        delays = [throttle.failed(CLIENT, now=100.0 + i) for i in range(15)]
        assert max(delays) == 5.0
        assert delays[-1] == 5.0

    def test_failures__are_counted_per_address(self):
        throttle = LoginThrottle(delay=1.0, max_failures=0, lockout=900.0)
        throttle.failed(CLIENT, now=100.0)
        throttle.failed(CLIENT, now=101.0)
        assert throttle.failed(OTHER, now=102.0) == 1.0

    def test_address_without_failures__is_not_locked(self):
        throttle = LoginThrottle(delay=1.0, max_failures=3, lockout=900.0)
        assert throttle.locked(CLIENT, now=100.0) == 0.0

    def test_failures_below_max__do_not_lock(self):
        throttle = LoginThrottle(delay=1.0, max_failures=3, lockout=900.0)
        throttle.failed(CLIENT, now=100.0)
        throttle.failed(CLIENT, now=101.0)
        assert throttle.locked(CLIENT, now=102.0) == 0.0

    def test_max_failures__locks_address_for_lockout(self):
        throttle = LoginThrottle(delay=1.0, max_failures=3, lockout=900.0)
        for second in (100.0, 101.0, 102.0):
            throttle.failed(CLIENT, now=second)
        assert throttle.locked(CLIENT, now=102.0) == pytest.approx(900.0)
        assert throttle.locked(CLIENT, now=502.0) == pytest.approx(500.0)

    def test_lockout__leaves_other_addresses_alone(self):
        throttle = LoginThrottle(delay=1.0, max_failures=3, lockout=900.0)
        for second in (100.0, 101.0, 102.0):
            throttle.failed(CLIENT, now=second)
        assert throttle.locked(OTHER, now=103.0) == 0.0

    def test_lockout__expires_after_lockout_seconds(self):
        throttle = LoginThrottle(delay=1.0, max_failures=3, lockout=900.0)
        for second in (100.0, 101.0, 102.0):
            throttle.failed(CLIENT, now=second)
        assert throttle.locked(CLIENT, now=1001.9) > 0.0
        assert throttle.locked(CLIENT, now=1002.0) == 0.0

    def test_failure_after_expired_lockout__starts_count_afresh(self):
        throttle = LoginThrottle(delay=1.0, max_failures=3, lockout=900.0)
        for second in (100.0, 101.0, 102.0):
            throttle.failed(CLIENT, now=second)
        throttle.locked(CLIENT, now=1100.0)
        assert throttle.failed(CLIENT, now=1100.0) == 1.0
        assert throttle.locked(CLIENT, now=1100.0) == 0.0

    def test_failures_outside_window__are_forgotten(self):
        throttle = LoginThrottle(delay=1.0, max_failures=3, lockout=900.0, window=60.0)
        throttle.failed(CLIENT, now=100.0)
        throttle.failed(CLIENT, now=101.0)
        assert throttle.failed(CLIENT, now=200.0) == 1.0
        assert throttle.locked(CLIENT, now=200.0) == 0.0

    def test_success__clears_failures(self):
        throttle = LoginThrottle(delay=1.0, max_failures=3, lockout=900.0)
        throttle.failed(CLIENT, now=100.0)
        throttle.failed(CLIENT, now=101.0)
        throttle.succeeded(CLIENT)
        assert throttle.failed(CLIENT, now=102.0) == 1.0
        assert throttle.locked(CLIENT, now=102.0) == 0.0

    def test_zero_max_failures__never_locks(self):
        throttle = LoginThrottle(delay=1.0, max_failures=0, lockout=900.0)
        for second in range(50):
            throttle.failed(CLIENT, now=float(second))
        assert throttle.locked(CLIENT, now=50.0) == 0.0

    def test_many_addresses__are_pruned_once_their_window_passes(self):
        throttle = LoginThrottle(delay=1.0, max_failures=0, lockout=900.0, window=60.0)
        for number in range(10001):
            throttle.failed(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}", now=0.0)
        throttle.failed(CLIENT, now=120.0)
        assert len(throttle._failures) == 1
