"""Protocol buffers for etcd's gRPC API, schema-driven, standard library only.

The messages are the same dicts the JSON gateway takes and gives (its field names), so
the etcd backend builds its requests and reads its answers the same way over either. The
JSON forms are converted here and nowhere else:

- bytes fields take base64 text (the gateway's form, as ``gateway.b64`` makes it) or
  bytes, and are decoded as bytes (``gateway.unb64`` passes bytes through);
- 64-bit integers take ints or decimal strings, and are decoded as ints;
- enums take their names (or numbers) and are decoded as names.

Decoding skips unknown fields (a newer etcd may send more) and is bounded: nesting
depth, fields per answer, and a field's length within its message. Anything else a
server sends wrong is :class:`~lelect.backends.etcd.gateway.Garbled`.

Field numbers: etcd's api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto.
"""

from __future__ import annotations

import base64

from lelect.backends.etcd.gateway import Garbled

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

    # A field: (name, kind, detail, repeated). kind: "bytes", "string", "int" (int64, uint64,
    # int32: varints), "bool", "enum" (detail: names by number), "msg" (detail: schema name).
    Field = tuple[str, str, Any, bool]

MAX_DEPTH = 16  # messages within messages
MAX_FIELDS = 1 << 20  # fields in one answer, all levels

_SORT_ORDER = ("NONE", "ASCEND", "DESCEND")
_SORT_TARGET = ("KEY", "VERSION", "CREATE", "MOD", "VALUE")
_COMPARE_RESULT = ("EQUAL", "GREATER", "LESS", "NOT_EQUAL")
_COMPARE_TARGET = ("VERSION", "CREATE", "MOD", "VALUE", "LEASE")
_EVENT_TYPE = ("PUT", "DELETE")


def _f(name: str, kind: str = "int", detail: Any = None, repeated: bool = False) -> Field:
    return (name, kind, detail, repeated)


SCHEMAS: dict[str, dict[int, Field]] = {
    "ResponseHeader": {1: _f("cluster_id"), 2: _f("member_id"), 3: _f("revision"),
                       4: _f("raft_term")},
    "KeyValue": {1: _f("key", "bytes"), 2: _f("create_revision"), 3: _f("mod_revision"),
                 4: _f("version"), 5: _f("value", "bytes"), 6: _f("lease")},
    "Event": {1: _f("type", "enum", _EVENT_TYPE), 2: _f("kv", "msg", "KeyValue"),
              3: _f("prev_kv", "msg", "KeyValue")},
    "RangeRequest": {1: _f("key", "bytes"), 2: _f("range_end", "bytes"), 3: _f("limit"),
                     4: _f("revision"), 5: _f("sort_order", "enum", _SORT_ORDER),
                     6: _f("sort_target", "enum", _SORT_TARGET), 7: _f("serializable", "bool"),
                     8: _f("keys_only", "bool"), 9: _f("count_only", "bool"),
                     10: _f("min_mod_revision"), 11: _f("max_mod_revision"),
                     12: _f("min_create_revision"), 13: _f("max_create_revision")},
    "RangeResponse": {1: _f("header", "msg", "ResponseHeader"),
                      2: _f("kvs", "msg", "KeyValue", True), 3: _f("more", "bool"),
                      4: _f("count")},
    "PutRequest": {1: _f("key", "bytes"), 2: _f("value", "bytes"), 3: _f("lease"),
                   4: _f("prev_kv", "bool"), 5: _f("ignore_value", "bool"),
                   6: _f("ignore_lease", "bool")},
    "PutResponse": {1: _f("header", "msg", "ResponseHeader"), 2: _f("prev_kv", "msg", "KeyValue")},
    "DeleteRangeRequest": {1: _f("key", "bytes"), 2: _f("range_end", "bytes"),
                           3: _f("prev_kv", "bool")},
    "DeleteRangeResponse": {1: _f("header", "msg", "ResponseHeader"), 2: _f("deleted"),
                            3: _f("prev_kvs", "msg", "KeyValue", True)},
    "RequestOp": {1: _f("request_range", "msg", "RangeRequest"),
                  2: _f("request_put", "msg", "PutRequest"),
                  3: _f("request_delete_range", "msg", "DeleteRangeRequest"),
                  4: _f("request_txn", "msg", "TxnRequest")},
    "ResponseOp": {1: _f("response_range", "msg", "RangeResponse"),
                   2: _f("response_put", "msg", "PutResponse"),
                   3: _f("response_delete_range", "msg", "DeleteRangeResponse"),
                   4: _f("response_txn", "msg", "TxnResponse")},
    "Compare": {1: _f("result", "enum", _COMPARE_RESULT), 2: _f("target", "enum", _COMPARE_TARGET),
                3: _f("key", "bytes"), 4: _f("version"), 5: _f("create_revision"),
                6: _f("mod_revision"), 7: _f("value", "bytes"), 8: _f("lease"),
                64: _f("range_end", "bytes")},
    "TxnRequest": {1: _f("compare", "msg", "Compare", True),
                   2: _f("success", "msg", "RequestOp", True),
                   3: _f("failure", "msg", "RequestOp", True)},
    "TxnResponse": {1: _f("header", "msg", "ResponseHeader"), 2: _f("succeeded", "bool"),
                    3: _f("responses", "msg", "ResponseOp", True)},
    "LeaseGrantRequest": {1: _f("TTL"), 2: _f("ID")},
    "LeaseGrantResponse": {1: _f("header", "msg", "ResponseHeader"), 2: _f("ID"), 3: _f("TTL"),
                           4: _f("error", "string")},
    "LeaseRevokeRequest": {1: _f("ID")},
    "LeaseRevokeResponse": {1: _f("header", "msg", "ResponseHeader")},
    "LeaseKeepAliveRequest": {1: _f("ID")},
    "LeaseKeepAliveResponse": {1: _f("header", "msg", "ResponseHeader"), 2: _f("ID"),
                               3: _f("TTL")},
    "WatchCreateRequest": {1: _f("key", "bytes"), 2: _f("range_end", "bytes"),
                           3: _f("start_revision"), 4: _f("progress_notify", "bool"),
                           6: _f("prev_kv", "bool"), 7: _f("watch_id"), 8: _f("fragment", "bool")},
    "WatchCancelRequest": {1: _f("watch_id")},
    "WatchRequest": {1: _f("create_request", "msg", "WatchCreateRequest"),
                     2: _f("cancel_request", "msg", "WatchCancelRequest")},
    "WatchResponse": {1: _f("header", "msg", "ResponseHeader"), 2: _f("watch_id"),
                      3: _f("created", "bool"), 4: _f("canceled", "bool"),
                      5: _f("compact_revision"), 6: _f("cancel_reason", "string"),
                      7: _f("fragment", "bool"), 11: _f("events", "msg", "Event", True)},
    "AuthenticateRequest": {1: _f("name", "string"), 2: _f("password", "string")},
    "AuthenticateResponse": {1: _f("header", "msg", "ResponseHeader"), 2: _f("token", "string")},
}

#: Members of a oneof: sent even when they hold their default (a compare with a
#: create_revision of 0 says "does not exist" in so many words, as the gateway sends it).
ONEOF = {("Compare", number) for number in range(4, 9)}

#: Per schema: field name -> (number, field), for encoding.
_BY_NAME = {name: {f[0]: (number, f) for number, f in fields.items()}
            for name, fields in SCHEMAS.items()}


# -- encoding ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # negative int64: ten bytes, two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_of(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return base64.b64decode(value)  # the gateway's form


def encode(schema: str, message: dict[str, Any]) -> bytes:
    """``message`` (gateway field names and forms) as protobuf; unknown names are an error
    (a typo here would silently drop a guard from a transaction)."""
    fields = _BY_NAME[schema]
    out = bytearray()
    for name, value in message.items():
        try:
            number, (_, kind, detail, repeated) = fields[name]
        except KeyError:
            raise ValueError(f"{schema} has no field {name!r}") from None
        for item in (value if repeated else (value,)):
            if kind == "msg":
                body = encode(detail, item)
                out += _varint(number << 3 | 2) + _varint(len(body)) + body
            elif kind in ("bytes", "string"):
                raw = item.encode("utf-8") if kind == "string" else _bytes_of(item)
                if not raw and not repeated and (schema, number) not in ONEOF:
                    continue  # proto3: a default is not sent
                out += _varint(number << 3 | 2) + _varint(len(raw)) + raw
            else:
                if kind == "enum":
                    number_value = item if isinstance(item, int) else detail.index(item)
                elif kind == "bool":
                    number_value = int(bool(item))
                else:
                    number_value = int(item)
                if number_value or (schema, number) in ONEOF:
                    out += _varint(number << 3) + _varint(number_value)
    return bytes(out)


# -- decoding ---------------------------------------------------------------------------------


def decode(schema: str, data: bytes) -> dict[str, Any]:
    """A protobuf message as the gateway's dict (defaults absent, as in its JSON)."""
    budget = [MAX_FIELDS]
    try:
        return _decode(schema, memoryview(data), 0, budget)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, Garbled):
            raise
        raise Garbled(f"not a {schema} message ({exc})") from None


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise Garbled("a varint longer than ten bytes")


def _decode(schema: str, data: memoryview, depth: int, budget: list[int]) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise Garbled(f"messages nested deeper than {MAX_DEPTH}")
    fields = SCHEMAS[schema]
    out: dict[str, Any] = {}
    pos, end = 0, len(data)
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise Garbled(f"more than {MAX_FIELDS} fields in one answer")
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        value, raw = 0, data[0:0]
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            if length > end - pos:
                raise Garbled(f"{schema}: a field longer than its message")
            raw, pos = data[pos:pos + length], pos + length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise Garbled(f"{schema}: wire type {wire_type}")
        if pos > end:
            raise Garbled(f"{schema}: truncated")
        field = fields.get(number)
        if field is None:
            continue  # unknown: skipped
        name, kind, detail, repeated = field
        if wire_type != (2 if kind in ("msg", "bytes", "string") else 0):
            raise Garbled(f"{schema}.{name}: wrong wire type {wire_type}")
        item: Any
        if kind == "msg":
            item = _decode(detail, raw, depth + 1, budget)
        elif kind == "bytes":
            item = bytes(raw)
        elif kind == "string":
            item = bytes(raw).decode("utf-8", "replace")
        elif kind == "bool":
            item = bool(value)
        elif kind == "enum":
            item = detail[value] if value < len(detail) else value
        else:
            item = value - (1 << 64) if value >= 1 << 63 else value  # int64
        if repeated:
            out.setdefault(name, []).append(item)
        else:
            out[name] = item
    return out

