"""Opaque, signed page tokens for keyset paging.

A token carries the direction and the (created_at, id) of the last item on its
page. It is signed with a per-database secret and bound to the organization and to
the list it pages (its ``list_id``: the organization's pods, a pod's keys ...), so
a garbled, edited, forged or borrowed token, or one from another list, is rejected
rather than served a wrong page.
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
    after: tuple  # (created_at, id) of the last item already returned


# The list of an organization's pods, as an organization key sees it. Its tokens are
# signed as they were before lists had ids, so that tokens issued then stay valid.
ORGANIZATION_PODS = "pods"


def _mac(secret: bytes, org_id: int, list_id: str, payload: bytes) -> bytes:
    bound = b"%d:" % org_id if list_id == ORGANIZATION_PODS else b"%d:%s:" % (org_id, list_id.encode())
    return hmac.new(secret, bound + payload, hashlib.sha256).digest()[:MAC_SIZE]


def encode(secret: bytes, org_id: int, list_id: str, ascending: bool, created_at: str, item_id: str) -> str:
    payload = f"{'a' if ascending else 'd'}\n{created_at}\n{item_id}".encode()
    return _b64(_mac(secret, org_id, list_id, payload) + payload)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(secret: bytes, org_id: int, list_id: str, token: str) -> PagePosition:
    """:raise ValueError: this server did not issue the token for this list of this
    organization."""
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
    if not hmac.compare_digest(mac, _mac(secret, org_id, list_id, payload)):
        raise ValueError("bad signature")
    direction, created_at, item_id = payload.decode().split("\n")
    return PagePosition(direction == "a", (created_at, item_id))
