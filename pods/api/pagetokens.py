"""Opaque, signed page tokens for keyset paging.

A token carries the direction and the (created_at, id) of the last item on its
page. It is signed with a per-database secret and bound to the organization and to
the list it pages (its ``list_id``: the organization's pods, a pod's keys ...), so
a garbled, edited, forged or borrowed token, or one from another list, is rejected
rather than served a wrong page.

What is signed is one unambiguous encoding: a version tag, then the organization,
the list and the payload, each prefixed with its length, so no two (organization,
list, payload) sign the same bytes. Tokens issued by earlier versions signed
``"{org}:" + payload`` (the organization's pods) or ``"{org}:{list}:" + payload``
(every other list), where one list's input could be a prefix of another's; they
are still accepted, but only in their exact old shape: a payload of exactly a
direction ``a`` or ``d``, a timestamp and an id.
"""

import base64
import binascii
import hashlib
import hmac
import re
import struct
from typing import NamedTuple

MAC_SIZE = 16
MAX_TOKEN_LENGTH = 512
# The first byte of a token of this format. An old token starts with its MAC, so
# any byte; the two are told apart by which signature verifies, and their signed
# inputs cannot coincide (this one starts with SIGNED_TAG, an old one with digits).
VERSION = b"\x02"
SIGNED_TAG = b"pods page token v2\x00"
# "a" or "d", a timestamp as the storage writes it, an id: the only payload either
# format signs. The timestamp may carry any fraction (older versions stored
# milliseconds); an id is anything but a line break.
PAYLOAD = re.compile(rb"([ad])\n(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)\n([^\n]+)")


class PagePosition(NamedTuple):
    ascending: bool
    after: tuple  # (created_at, id) of the last item already returned


# The list of an organization's pods, as an organization key sees it. Its old
# tokens were signed without a list id.
ORGANIZATION_PODS = "pods"


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _mac(secret: bytes, org_id: int, list_id: str, payload: bytes) -> bytes:
    signed = SIGNED_TAG + _field(b"%d" % org_id) + _field(list_id.encode()) + _field(payload)
    return hmac.new(secret, signed, hashlib.sha256).digest()[:MAC_SIZE]


def _old_mac(secret: bytes, org_id: int, list_id: str, payload: bytes) -> bytes:
    """How tokens were signed before this format (still accepted, never issued)."""
    bound = b"%d:" % org_id if list_id == ORGANIZATION_PODS else b"%d:%s:" % (org_id, list_id.encode())
    return hmac.new(secret, bound + payload, hashlib.sha256).digest()[:MAC_SIZE]


def encode(secret: bytes, org_id: int, list_id: str, ascending: bool, created_at: str, item_id: str) -> str:
    payload = f"{'a' if ascending else 'd'}\n{created_at}\n{item_id}".encode()
    return _b64(VERSION + _mac(secret, org_id, list_id, payload) + payload)


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
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(str(e)) from None
    # base64 ignores the spare low bits of the last character, so an edit there can
    # decode to the same bytes: only the canonical spelling of a token is accepted.
    if _b64(raw) != token:
        raise ValueError("not canonical")
    if raw[:1] == VERSION and _verified(raw[1:], _mac(secret, org_id, list_id, raw[1 + MAC_SIZE:])):
        payload = raw[1 + MAC_SIZE:]
    elif _verified(raw, _old_mac(secret, org_id, list_id, raw[MAC_SIZE:])):
        payload = raw[MAC_SIZE:]
    else:
        raise ValueError("bad signature")
    parts = PAYLOAD.fullmatch(payload)
    if parts is None:  # a signed input of another shape: never issued as a token
        raise ValueError("not a page position")
    direction, created_at, item_id = (part.decode() for part in parts.groups())
    return PagePosition(direction == "a", (created_at, item_id))


def _verified(raw: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(raw[:MAC_SIZE], expected)
