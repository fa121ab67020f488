"""marshmallow schemas: ``load`` checks what comes in, ``dump`` shapes what goes out."""

import re

from datetime import UTC, datetime

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_dump,
    post_load,
    validate,
    validates_schema,
)
from marshmallow.experimental.context import Context

from . import pagetokens
from .permissions import PERMISSIONS, permissions_from
from ..storage import utc_text

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> None:
    if CONTROL_CHARACTERS.search(value):
        raise ValidationError("Must not contain control characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a JSON "\ud800"
        raise ValidationError("Must be valid Unicode text.") from None


# What _printable allows, as a JSON Schema pattern for the OpenAPI document.
PRINTABLE_PATTERN = "^[^" + CONTROL_CHARACTERS.pattern[1:-1] + "]*$"


def Text(metadata: dict | None = None, **kwargs) -> fields.String:
    """An optional string of 1 to 255 printable characters; null means absent."""
    return fields.String(
        load_default=None,
        allow_none=True,
        validate=[validate.Length(min=1, max=255), _printable],
        metadata={"pattern": PRINTABLE_PATTERN, **(metadata or {})},
        **kwargs,
    )


class PodCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    name = Text(metadata={"description": "Name of pod. Defaults to the client_id, else the pod_id."})
    client_id = Text(
        metadata={"description": "Client ID of pod. Creating again with the same client_id returns the same pod."}
    )


class Column(fields.String):
    """A text column of a pod row, dumped as it is stored.

    Rows always hold every column, as str (or None where the column allows it), so
    the value needs no lookup strategy, no default and no conversion: marshmallow's
    generic path for those was half of a 10-pod page's dump.
    """

    def serialize(self, attr, obj, accessor=None, **kwargs):
        return obj[self.attribute or attr]


class RowSchema(Schema):
    """A schema whose fields are all ``Column``s: a row dumps as one dict of its
    columns, built at once. marshmallow calls each field's ``serialize`` in turn,
    for Columns a lookup each: a hundred pods' page spent a third of its time there."""

    # (the dump_fields read, their columns): one tuple, replaced whole, for the
    # threads that share a schema.
    _read: tuple[dict | None, list[tuple[str, str]] | None] = (None, None)

    def _serialize(self, obj, *, many=False):
        dump_fields = self.dump_fields
        read, columns = self._read
        if read is not dump_fields:  # marshmallow makes new ones when only or exclude change
            columns = _columns(dump_fields)
            self._read = (dump_fields, columns)
        if columns is None or obj is None:
            return super()._serialize(obj, many=many)
        if many:
            return [{key: row[column] for key, column in columns} for row in obj]
        return {key: obj[column] for key, column in columns}


def _columns(dump_fields: dict) -> list[tuple[str, str]] | None:
    """(key, column) per field dumped, as marshmallow and Column.serialize read them;
    None when a field is not a Column (dumped by marshmallow as usual)."""
    if not all(isinstance(field, Column) for field in dump_fields.values()):
        return None
    return [(name if field.data_key is None else field.data_key, field.attribute or name)
            for name, field in dump_fields.items()]


class PodSchema(RowSchema):
    pod_id = Column(required=True, metadata={"description": "ID of pod."})
    name = Column(required=True, metadata={"description": "Name of pod."})
    client_id = Column(allow_none=True, metadata={"description": "Client ID of pod."})
    created_at = Column(required=True, metadata={"description": "Time at which pod was created."})
    # No endpoint changes a pod, so it was last updated when it was created.
    updated_at = Column(
        attribute="created_at",
        dump_only=True,
        required=True,
        metadata={"description": "Time at which pod was last updated."},
    )


class QueryInteger(fields.Integer):
    """A whole number written the one plain way: ASCII digits, no sign, blanks,
    underscores or leading zeros. ``int()`` alone takes all of those, and digits of
    any script ("1_0", " 5", "+5", "٥"), so a proxy or cache reading the query can
    disagree with this server about what was asked."""

    PATTERN = re.compile(r"0|[1-9][0-9]*")
    # No parameter is in range beyond this, and converting thousands of digits costs
    # time (Python refuses past 4,300).
    MAX_DIGITS = 18

    default_error_messages = {
        "invalid": "Not a valid integer: use the digits 0-9, with no sign, spaces or leading zeros."
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not self.PATTERN.fullmatch(value):
            raise self.make_error("invalid")
        if len(value) > self.MAX_DIGITS:
            raise self.make_error("too_large")
        return int(value)


class QueryBoolean(fields.Boolean):
    """``true``/``false`` in any case, or ``1``/``0``; nothing else."""

    truthy = {"true", "1"}
    falsy = {"false", "0"}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = value.lower()
        return super()._deserialize(value, attr, data, **kwargs)


# What decoding a page token needs: {"secret": bytes, "org_id": int, "list_id": str}.
PageTokenContext = Context[dict]


class PageToken(fields.String):
    """A page token issued by this server to this organization, loaded as its
    PagePosition."""

    def _deserialize(self, value, attr, data, **kwargs):
        token = super()._deserialize(value, attr, data, **kwargs)
        ctx = PageTokenContext.get()
        try:
            return pagetokens.decode(ctx["secret"], ctx["org_id"], ctx["list_id"], token)
        except ValueError:  # garbled, truncated, edited, another organization's or another list's
            raise ValidationError("Invalid page token.") from None


class ListArgsSchema(Schema):
    """Loads ``request.args`` (a MultiDict) to {"limit", "ascending", "after"}:
    ``after`` is the (created_at, id) to continue from, or None; a page token
    decides the direction when the request does not."""

    class Meta:
        unknown = EXCLUDE  # the contract ignores unknown query parameters

    limit = QueryInteger(
        load_default=10,
        validate=validate.Range(min=1, max=100),
        metadata={
            "description": "Page size, 1 to 100 (default 10), in ASCII digits without leading zeros.",
            "pattern": f"^({QueryInteger.PATTERN.pattern})$",
        },
    )
    ascending = QueryBoolean(
        load_default=None,
        metadata={"description": "Oldest first: true/false (any case) or 1/0. Default false."},
    )
    page_token = PageToken(
        load_default=None,
        metadata={"description": "The next_page_token of the previous page."},
    )

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _each_given_once(self, data, original, **kwargs):
        # marshmallow reads the first of repeated values; a proxy or cache may read
        # the last, so neither is taken.
        repeated = {name: ["Given more than once."] for name in self.load_fields if len(original.getlist(name)) > 1}
        if repeated:
            raise ValidationError(repeated)

    @validates_schema
    def _token_matches_direction(self, data, **kwargs):
        position, ascending = data["page_token"], data["ascending"]
        if position and ascending is not None and ascending != position.ascending:
            raise ValidationError("Page token was issued for the other sort direction.", "page_token")

    @post_load
    def _resolve_position(self, data, **kwargs):
        position = data.pop("page_token")
        data["ascending"] = position.ascending if position else bool(data["ascending"])
        data["after"] = position.after if position else None
        return data


class PodListSchema(Schema):
    count = fields.Integer(required=True, metadata={"description": "Number of items returned."})
    limit = fields.Integer(required=True, metadata={"description": "Limit of number of items returned."})
    next_page_token = fields.String(
        metadata={"description": "Page token for pagination; absent on the last page."}
    )
    pods = fields.Nested(PodSchema, many=True, required=True, metadata={"description": "The pods of this page."})


# -- API keys --------------------------------------------------------------------------


class JSONBoolean(fields.Boolean):
    """true or false, nothing else (marshmallow's Boolean also takes 1, "yes" ...)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


# The SDK's ApiKeyPermissions: an object of booleans, one per permission name; any
# other name is an unknown field. null counts as false.
PermissionsSchema = Schema.from_dict(
    {name: JSONBoolean(allow_none=True) for name in PERMISSIONS}, name="ApiKeyPermissionsSchema"
)


class Permissions(fields.Nested):
    """Loads the permissions object to the frozenset of names set to true; dumps a
    stored set as the names it grants, each true (absent: every permission)."""

    def __init__(self, **kwargs):
        super().__init__(PermissionsSchema, allow_none=True, **kwargs)

    def _deserialize(self, value, attr, data, partial=None, **kwargs):
        loaded = super()._deserialize(value, attr, data, partial=partial, **kwargs)
        return frozenset(name for name, granted in loaded.items() if granted)

    def serialize(self, attr, obj, accessor=None, **kwargs):
        stored = obj["permissions"]
        return None if stored is None else {name: True for name in PERMISSIONS if name in permissions_from(stored)}


# RFC 3339's date-time (section 5.6), nothing else ISO 8601 allows: a full date, "T",
# a full time with an optional fraction, and "Z" or a numeric offset.
RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


class FutureTime(fields.AwareDateTime):
    """An RFC 3339 time with its offset, in the future; loaded as stored (UTC text)."""

    def __init__(self, **kwargs):
        super().__init__(format="iso", allow_none=True, load_default=None, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not RFC3339.fullmatch(value):
            raise ValidationError("Must be an RFC 3339 time with an offset, e.g. 2030-01-01T00:00:00Z.")
        moment = super()._deserialize(value.upper(), attr, data, **kwargs)
        if moment <= datetime.now(UTC):
            raise ValidationError("Must be in the future.")
        try:
            return utc_text(moment)
        except OverflowError:  # in UTC, past 9999-12-31
            raise ValidationError("Must be a time before the year 10000 in UTC.") from None


class Unsupported(fields.Field):
    """A field of the SDK's that this server refuses, saying why; null is absent."""

    def __init__(self, message: str, **kwargs):
        super().__init__(allow_none=True, load_only=True, **kwargs)
        self.message = message

    def _deserialize(self, value, attr, data, **kwargs):
        raise ValidationError(self.message)


class ApiKeyUpdateSchema(Schema):
    """PATCH: null or absent leaves a field as it is."""

    class Meta:
        unknown = RAISE  # expires_at is fixed at creation: unknown here

    name = Text(metadata={"description": "Name of the key."})
    permissions = Permissions(
        load_default=None,
        metadata={"description": "Replaces the key's permissions: exactly those set to true."},
    )


class ApiKeyCreateSchema(ApiKeyUpdateSchema):
    """POST: absent name is the token's prefix, absent permissions every permission,
    absent expires_at the creating key's own expiry."""

    expires_at = FutureTime(metadata={"description": "When the key stops working; in the future, fixed."})
    public_key = Unsupported("Public keys are not supported by this server; omit public_key for a bearer key.")


class Time(Column):
    """A timestamp column, dumped as stored (RFC 3339 UTC text)."""

    def __init__(self, **kwargs):
        super().__init__(metadata={"format": "date-time", **kwargs.pop("metadata", {})}, **kwargs)


class ApiKeySchema(Schema):
    """A key as the API shows it; optional fields without a value are left out."""

    OPTIONAL = ("pod_id", "permissions", "used_at", "expires_at")

    type = fields.Constant("bearer", dump_only=True, required=True, metadata={"enum": ["bearer"]})
    api_key_id = Column(attribute="key_id", required=True, metadata={"description": "ID of the key."})
    prefix = Column(required=True, metadata={"description": "The token's first 12 characters."})
    name = Column(required=True, metadata={"description": "Name of the key."})
    pod_id = Column(metadata={"description": "The pod the key is scoped to; absent for an organization key."})
    permissions = Permissions(metadata={"description": "The permissions granted; absent: every permission."})
    used_at = Time(metadata={"description": "When the key last authenticated a request, to within a minute."})
    created_at = Time(required=True)
    updated_at = Time(required=True)
    expires_at = Time(metadata={"description": "When the key stops working; absent: never."})

    @post_dump
    def _leave_out_empty(self, data, **kwargs):
        for name in self.OPTIONAL:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class ApiKeyCreatedSchema(ApiKeySchema):
    """The answer to a create: the key, and its token, shown this once."""

    class Meta:
        exclude = ("type", "used_at", "updated_at")

    api_key = fields.String(required=True, metadata={"description": "The token: shown this once, never again."})


class ApiKeyListArgsSchema(ListArgsSchema):
    type = fields.String(
        load_default="bearer",
        validate=validate.OneOf(["bearer", "public_key"]),
        metadata={"description": "bearer: every key; public_key: none (not supported by this server)."},
    )


class ApiKeyListSchema(Schema):
    count = fields.Integer(required=True, metadata={"description": "Number of items returned."})
    limit = fields.Integer(required=True, metadata={"description": "Limit of number of items returned."})
    next_page_token = fields.String(metadata={"description": "Page token for pagination; absent on the last page."})
    api_keys = fields.Nested(ApiKeySchema, many=True, required=True, metadata={"description": "Newest first."})


pod_create_schema = PodCreateSchema()
pod_schema = PodSchema()
list_args_schema = ListArgsSchema()
pod_list_schema = PodListSchema()
api_key_create_schema = ApiKeyCreateSchema()
api_key_update_schema = ApiKeyUpdateSchema()
api_key_schema = ApiKeySchema()
api_key_created_schema = ApiKeyCreatedSchema()
api_key_list_args_schema = ApiKeyListArgsSchema()
api_key_list_schema = ApiKeyListSchema()
