"""ClientAccess: loopback-only without keys; Bearer / x-api-key with keys."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import Headers

from qwenproxy.edge.access import ClientAccess
from qwenproxy.errors import AuthenticationError, PermissionDeniedError

NO_HEADERS = Headers()


# --- no keys: loopback only -------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.53", "::1"])
def test_without_keys_loopback_clients_are_allowed(address: str) -> None:
    access = ClientAccess(())
    assert access.enabled is False
    client = access.check(NO_HEADERS, address)
    assert isinstance(client, str) and client


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.20", "203.0.113.5", "::2", None, ""])
def test_without_keys_other_clients_are_refused(address: str | None) -> None:
    access = ClientAccess(())
    with pytest.raises(PermissionDeniedError) as caught:
        access.check(NO_HEADERS, address)
    assert caught.value.status == 403
    assert "PROXY_API_KEY" in caught.value.message


def test_without_keys_a_presented_key_does_not_open_the_door() -> None:
    access = ClientAccess(())
    with pytest.raises(PermissionDeniedError):
        access.check(Headers({"Authorization": "Bearer anything"}), "10.0.0.1")


def test_x_forwarded_for_is_ignored_by_default() -> None:
    access = ClientAccess(())
    # A remote client cannot claim to be local...
    with pytest.raises(PermissionDeniedError):
        access.check(Headers({"X-Forwarded-For": "127.0.0.1"}), "10.0.0.1")
    # ...and a request that a local reverse proxy forwarded for someone else is not
    # local either: without TRUST_PROXY_HEADERS its real client is unknown.
    with pytest.raises(PermissionDeniedError):
        access.check(Headers({"X-Forwarded-For": "10.0.0.1"}), "127.0.0.1")
    assert access.check(Headers({}), "127.0.0.1")


def test_trusted_forwarded_for_counts_only_from_a_local_proxy() -> None:
    access = ClientAccess((), trust_proxy_headers=True)
    with pytest.raises(PermissionDeniedError):  # a remote client talking to us directly
        access.check(Headers({"X-Forwarded-For": "127.0.0.1"}), "203.0.113.5")


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Host": "evil.example:8000"},
    {"Sec-Fetch-Site": "cross-site"},
])
def test_without_keys_web_pages_of_other_sites_are_refused(headers) -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        ClientAccess(()).check(Headers(headers), "127.0.0.1")
    assert "PROXY_API_KEY" in caught.value.message


@pytest.mark.parametrize("headers", [
    {"Host": "localhost:8000"},
    {"Host": "127.0.0.1:8000", "Origin": "http://localhost:3000"},
    {"Host": "[::1]:8000", "Sec-Fetch-Site": "same-origin"},
])
def test_without_keys_local_tools_and_local_pages_are_served(headers) -> None:
    assert ClientAccess(()).check(Headers(headers), "127.0.0.1") == "local"


def test_x_forwarded_for_is_used_when_proxy_headers_are_trusted() -> None:
    access = ClientAccess((), trust_proxy_headers=True)
    # Behind a local reverse proxy: the real client is the forwarded address.
    with pytest.raises(PermissionDeniedError):
        access.check(Headers({"X-Forwarded-For": "10.0.0.1"}), "127.0.0.1")
    assert access.check(Headers({"X-Forwarded-For": "127.0.0.1"}), "127.0.0.1")
    # No header: the socket address counts.
    assert access.check(NO_HEADERS, "127.0.0.1")
    with pytest.raises(PermissionDeniedError):
        access.check(NO_HEADERS, "10.0.0.1")


def test_trusted_x_forwarded_for_cannot_be_spoofed_by_the_client() -> None:
    # The remote client 203.0.113.5 sends its own `X-Forwarded-For: 127.0.0.1`; the
    # trusted reverse proxy on loopback appends the address it really saw. Only the entry
    # the trusted proxy added (the last one) may be believed.
    access = ClientAccess((), trust_proxy_headers=True)
    headers = Headers({"X-Forwarded-For": "127.0.0.1, 203.0.113.5"})
    with pytest.raises(PermissionDeniedError):
        access.check(headers, "127.0.0.1")


# --- with keys ---------------------------------------------------------------------------


KEYS = ("key-one", "key-two")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer key-one"},
        {"authorization": "bearer key-one"},
        {"Authorization": "Bearer   key-one  "},
        {"x-api-key": "key-one"},
        {"X-Api-Key": "key-one"},
    ],
)
def test_with_keys_bearer_and_x_api_key_are_accepted(headers: dict[str, str]) -> None:
    access = ClientAccess(KEYS)
    assert access.enabled is True
    assert access.check(Headers(headers), "203.0.113.5")


def test_second_key_is_accepted_too() -> None:
    access = ClientAccess(KEYS)
    assert access.check(Headers({"Authorization": "Bearer key-two"}), "203.0.113.5")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer key-one-and-more"},
        {"Authorization": "Bearer key-on"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic a2V5LW9uZTo="},
        {"Authorization": "key-one"},
        {"x-api-key": "wrong"},
        {"x-api-key": ""},
        {"X-Forwarded-For": "127.0.0.1"},
    ],
)
def test_with_keys_wrong_or_missing_key_is_rejected(headers: dict[str, str]) -> None:
    access = ClientAccess(KEYS, trust_proxy_headers=True)
    with pytest.raises(AuthenticationError) as caught:
        access.check(Headers(headers), "203.0.113.5")
    assert caught.value.status == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.to_body()["error"]["code"] == "invalid_api_key"


def test_with_keys_loopback_clients_need_a_key_too() -> None:
    access = ClientAccess(KEYS)
    with pytest.raises(AuthenticationError):
        access.check(NO_HEADERS, "127.0.0.1")


def test_client_id_is_a_stable_hash_not_the_key() -> None:
    access = ClientAccess(KEYS)
    via_bearer = access.check(Headers({"Authorization": "Bearer key-one"}), "203.0.113.5")
    via_header = access.check(Headers({"x-api-key": "key-one"}), "198.51.100.7")
    other = access.check(Headers({"Authorization": "Bearer key-two"}), "203.0.113.5")
    assert via_bearer == via_header  # the same key is the same client, however sent
    assert via_bearer != other
    for client_id, key in ((via_bearer, "key-one"), (other, "key-two")):
        assert key not in client_id
        assert client_id != key
    # Stable across instances (for example across worker processes).
    again = ClientAccess(KEYS).check(Headers({"x-api-key": "key-one"}), "203.0.113.5")
    assert again == via_bearer
    # The error message for a wrong key does not echo any configured key.
    with pytest.raises(AuthenticationError) as caught:
        access.check(Headers({"x-api-key": "nope"}), "203.0.113.5")
    assert all(key not in caught.value.message for key in KEYS)


# --- behind a platform's router (TRUST_PROXY_HEADERS) ------------------------------------


@pytest.mark.parametrize("router", ["10.1.42.7", "172.17.0.1", "192.168.3.4", "100.64.9.9",
                                    "fdaa:0:1::3", "::ffff:10.0.0.9", "127.0.0.1"])
def test_trusted_forwarded_for_takes_the_rightmost_hop_from_a_router(router: str) -> None:
    access = ClientAccess((), trust_proxy_headers=True)
    # The client wrote its own entries; the router appended the address it saw.
    headers = Headers({"X-Forwarded-For": "127.0.0.1, 198.51.100.1, 203.0.113.9"})
    assert access.client_address(router, headers) == "203.0.113.9"


def test_forwarded_for_from_a_public_peer_is_never_trusted() -> None:
    access = ClientAccess((), trust_proxy_headers=True)
    assert access.client_address("203.0.113.5", Headers({"X-Forwarded-For": "10.0.0.1"})) is None


def test_a_request_through_a_router_on_another_machine_is_never_local() -> None:
    access = ClientAccess((), trust_proxy_headers=True)
    with pytest.raises(PermissionDeniedError):
        access.check(Headers({"X-Forwarded-For": "127.0.0.1"}), "10.1.42.7")


def test_untrusted_forwarded_requests_suggest_the_setting_once(caplog) -> None:
    access = ClientAccess(("k1",))
    with caplog.at_level("INFO", logger="qwenproxy.edge.access"):
        for _ in range(3):
            assert access.client_address("10.1.42.7", Headers({"X-Forwarded-For": "1.2.3.4"})) \
                is None
    hints = [r for r in caplog.records if "TRUST_PROXY_HEADERS=true" in r.getMessage()]
    assert len(hints) == 1
