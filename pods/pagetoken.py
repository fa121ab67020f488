"""Opaque, signed page tokens for keyset paging.

A token carries the direction and the (created_at, pod_id) of the last pod on its
page. It is signed with a per-database secret and bound to the organization, so a
garbled, edited, forged or borrowed token is rejected rather than served a wrong page.
"""

import base64
import binascii
import hashlib
import hmac
from typing import NamedTuple

MAC_SIZE = 16
MAX_TOKEN_LENGTH = 512


class PagePosition(NamedTuple):
    ascending: bool
    after: tuple  # (created_at, pod_id) of the last pod already returned


def _mac(secret: bytes, org_id: int, payload: bytes) -> bytes:
    return hmac.new(secret, b"%d:" % org_id + payload, hashlib.sha256).digest()[:MAC_SIZE]


def encode(secret: bytes, org_id: int, ascending: bool, created_at: str, pod_id: str) -> str:
    payload = f"{'a' if ascending else 'd'}\n{created_at}\n{pod_id}".encode()
    return _b64(_mac(secret, org_id, payload) + payload)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(secret: bytes, org_id: int, token: str) -> PagePosition:
    """:raise ValueError: this server did not issue the token to this organization."""
    try:
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("too long")
        padded = token.encode("ascii") + b"=" * (-len(token) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from None
    # base64 ignores the spare low bits of the last character, so an edit there can
    # decode to the same bytes: only the canonical spelling of a token is accepted.
    if _b64(raw) != token:
        raise ValueError("not canonical")
    mac, payload = raw[:MAC_SIZE], raw[MAC_SIZE:]
    if not hmac.compare_digest(mac, _mac(secret, org_id, payload)):
        raise ValueError("bad signature")
    direction, created_at, pod_id = payload.decode().split("\n")
    return PagePosition(direction == "a", (created_at, pod_id))
