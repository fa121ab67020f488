"""Who is asking, and what they may do: the caller behind a request's key, its
permissions and its scope. Every such decision is made here, from the one key
lookup that authentication does; views only ask.

A key belongs to an organization and is either an organization key (it sees every
pod and key of its organization) or scoped to one pod (it sees that pod and that
pod's keys only). Its permissions are the SDK's ``ApiKeyPermissions`` names; a
key stored without a set has every permission.
"""

import functools
from typing import NamedTuple

from .errors import fail

# The SDK's ApiKeyPermissions fields, in its order. Any other name is refused.
PERMISSIONS = (
    "inbox_read", "inbox_create", "inbox_update", "inbox_delete",
    "message_read", "message_reply", "message_send", "message_update", "message_delete",
    "agent_armor_release",
    "label_spam_read", "label_blocked_read", "label_unauthenticated_read", "label_trash_read",
    "draft_read", "draft_create", "draft_update", "draft_delete", "draft_send",
    "webhook_read", "webhook_create", "webhook_update", "webhook_delete",
    "domain_read", "domain_create", "domain_update", "domain_delete",
    "list_entry_read", "list_entry_create", "list_entry_delete",
    "metrics_read",
    "api_key_read", "api_key_create", "api_key_update", "api_key_delete",
    "app_connect", "app_share_owner", "account_update",
    "pod_read", "pod_create", "pod_update", "pod_delete",
    "calendar_read", "calendar_update",
    "calendar_event_read", "calendar_event_create", "calendar_event_update", "calendar_event_delete",
    "file_read", "file_create", "file_update", "file_delete",
)
EVERY_PERMISSION = frozenset(PERMISSIONS)
# The permissions an endpoint here needs; the others are kept and shown, and gate nothing.
GATING = ("pod_read", "pod_create", "pod_delete", "api_key_read", "api_key_create", "api_key_update", "api_key_delete")


def stored_permissions(granted: frozenset | None) -> str | None:
    """How a set of permissions is stored: None for every permission (so that a name
    a later version adds is granted too), else the names, space-separated."""
    return None if granted is None else " ".join(name for name in PERMISSIONS if name in granted)


@functools.lru_cache(maxsize=1024)
def permissions_from(stored: str | None) -> frozenset:
    """The permissions a stored value grants (cached: keys are few, requests many)."""
    return EVERY_PERMISSION if stored is None else frozenset(stored.split())


class Caller(NamedTuple):
    """The key that authenticated a request."""

    org_id: int
    org_name: str
    key_id: str
    pod_id: str | None  # the pod the key is scoped to; None for an organization key
    permissions: frozenset
    expires_at: str | None
    used_at: str | None
    # Stored as "every permission" (no set): also any name a later version adds.
    # A key that lists every current name explicitly has them, and no more.
    every_permission: bool = False

    @classmethod
    def from_row(cls, row) -> "Caller":
        return cls(
            row["org_id"], row["org_name"], row["key_id"], row["pod_id"],
            permissions_from(row["permissions"]), row["expires_at"], row["used_at"],
            row["permissions"] is None,
        )

    def default_grant(self) -> frozenset | None:
        """What a key this caller makes without a permissions object gets: every
        permission (None) only from a caller that has every permission; from any
        other, the caller's own explicit set."""
        return None if self.every_permission else self.permissions

    def sees_pod(self, pod_id: str) -> bool:
        """Whether ``pod_id`` is within this key's scope (whether it exists is the
        storage's business)."""
        return self.pod_id is None or self.pod_id == pod_id

    def sees_key(self, key) -> bool:
        """Whether a key (a row of this caller's organization) is within this key's scope."""
        return self.pod_id is None or self.pod_id == key["pod_id"]


def require_organization_scope(caller: Caller, action: str) -> None:
    """:raise 403: the caller's key is scoped to a pod, and ``action`` needs an
    organization key."""
    if caller.pod_id is not None:
        fail("outside_scope", pod_id=caller.pod_id, action=action)


def check_grant(caller: Caller, permissions: frozenset | None = None, expires_at: str | None = None) -> None:
    """No escalation: a key grants only permissions it has itself (None: every
    permission), and only until it expires itself.

    :raise 403: the grant goes beyond the caller's own key.
    """
    if permissions is None and not caller.every_permission:
        # "Every permission" includes names a later version adds: only a caller
        # stored with every permission holds them all.
        lacking = EVERY_PERMISSION - caller.permissions
        fail("permission_escalation", permissions=_names(lacking) if lacking else "those later versions add")
    lacking = (permissions or frozenset()) - caller.permissions
    if lacking:
        # Every name, however many: the client needs to know exactly what to leave out.
        fail("permission_escalation", permissions=_names(lacking))
    if expires_at is not None and caller.expires_at is not None and expires_at > caller.expires_at:
        fail("expiry_escalation", expires_at=caller.expires_at)


def _names(permissions) -> str:
    return ", ".join(name for name in PERMISSIONS if name in permissions)


def check_regrant(caller: Caller, key, permissions: frozenset) -> None:
    """No escalation by update: giving ``key`` (a stored row) the set ``permissions``
    adds only what the caller has (``check_grant``), and adds nothing at all when the
    key outlives the caller's own (it would hold the added permissions past the
    caller's expiry, which creating a key cannot do).

    :raise 403: the update goes beyond the caller's own key.
    """
    check_grant(caller, permissions)
    outlives = caller.expires_at is not None and (key["expires_at"] is None or key["expires_at"] > caller.expires_at)
    added = permissions - permissions_from(key["permissions"])
    if outlives and added:
        fail("update_escalation", expires_at=caller.expires_at, permissions=_names(added))
