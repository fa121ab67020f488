"""Request bodies: one JSON document, read one strict way by every endpoint that
takes a body.

Strict because two parsers must not read one body two ways: a proxy that checks
the first of two ``client_id`` keys and a server that uses the last, or a client
that sends Latin-1 or UTF-16 and a server that guesses.
"""

import json
import re

from flask import request
from marshmallow import ValidationError

from .errors import fail

# application/json, optionally with the one parameter charset=utf-8 (RFC 8259
# defines none; utf-8 is tolerated because many clients send it). Media type,
# parameter name and value are case-insensitive; the value may be quoted.
JSON_CONTENT_TYPE = re.compile(r'application/json(?:[ \t]*;[ \t]*charset=(?:utf-8|"utf-8"))?', re.IGNORECASE)


def json_body():
    """The request's JSON document; an empty body is ``{}``.

    :raise 413: the body is over MAX_CONTENT_LENGTH (raised by werkzeug on read).
    :raise 415: a Content-Encoding other than identity, or a non-empty body whose
        Content-Type is not ``JSON_CONTENT_TYPE``.
    :raise ValidationError: on ``_schema``: the body is not UTF-8, not JSON (RFC
        8259: no NaN or Infinity), or has an object with a key given twice.
    """
    raw = request.get_data(cache=False)
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.lower() != "identity":
        fail("unsupported_content_encoding")
    if not raw:
        return {}
    if not JSON_CONTENT_TYPE.fullmatch(request.headers.get("Content-Type", "")):
        fail("unsupported_media_type")
    try:
        text = raw.decode("utf-8")  # strict: no byte order mark sniffing, no lone surrogates
    except UnicodeDecodeError:
        raise ValidationError({"_schema": ["Request body is not valid UTF-8."]}) from None
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_not_json)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ValidationError({"_schema": ["Request body is not valid JSON."]}) from None


def _object_without_duplicates(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValidationError({"_schema": [f"Duplicate key {json.dumps(key)}."]})
            seen.add(key)
    return obj


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")
