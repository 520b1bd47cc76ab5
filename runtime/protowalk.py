"""A strict, bounded reader of the ONNX protobuf wire format, for checking a model before
onnxruntime sees it (onnx.proto field numbers; no onnx or protobuf import).

`scan_model` visits every message that can hold a TensorProto — graphs, nodes, attributes
(Constant values, If/Loop/Scan subgraphs), sparse tensors, model-local functions, training
graphs — and refuses any tensor that refers to external data. Everything else is skipped by its
length, never copied. It returns the metadata and the raw_data spans of the top-level
initializers, so memory is O(number of initializers) beyond the caller's memory map.

Strict: field number 0 or above 2**29-1, wire types 3, 4, 6 and 7, varints over 10 bytes,
lengths past the end of the enclosing message, a known message field that is not
length-delimited, nesting deeper than `MAX_DEPTH` and more than `MAX_FIELDS` fields in all are
refused at once, so any input is refused or accepted in bounded time and memory.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FIELDS = 1_000_000  # AlexNet has ~300; any real vision model far fewer than this
MAX_DEPTH = 64  # message nesting (a subgraph costs 3 levels: attribute, graph, node)
MAX_METADATA_BYTES = 16 << 20  # labels for a million classes fit
# Any one name, doc_string or other field of a model, graph, node, attribute or function that is
# not a tensor: onnxruntime keeps copies of each (a 1 GiB doc_string cost 3 GiB).
MAX_STRING_BYTES = 1 << 20

# Message kinds, and the fields of each that lead (length-delimited) to a kind that can hold a
# TensorProto. From onnx.proto (IR version 11).
MODEL, GRAPH, NODE, ATTRIBUTE, TENSOR, SPARSE, FUNCTION, TRAINING = range(8)
_NAMES = ("model", "graph", "node", "attribute", "tensor", "sparse tensor", "function", "training info")
_CHILDREN = {
    MODEL: {7: GRAPH, 20: TRAINING, 25: FUNCTION},  # graph, training_info, functions
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},  # node, initializer, sparse_initializer
    NODE: {5: ATTRIBUTE},
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE, 23: SPARSE},  # t g tensors graphs ...
    SPARSE: {1: TENSOR, 2: TENSOR},  # values, indices
    FUNCTION: {7: NODE, 11: ATTRIBUTE},  # node, attribute_proto
    TRAINING: {1: GRAPH, 2: GRAPH},  # initialization, algorithm
    TENSOR: {},
}
# Fields of ModelProto and GraphProto that onnx.proto defines; any other is ignored by onnxruntime,
# so one larger than MAX_UNKNOWN_BYTES can only be padding meant to cost memory: refused.
_KNOWN = {MODEL: {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25, 26}, GRAPH: {1, 2, 5, 10, 11, 12, 13, 14, 15, 16}}
MAX_UNKNOWN_BYTES = 16 << 20
_NUMBER_LISTS = {ATTRIBUTE: {7, 8}}  # attribute floats and ints: packed numbers, costing what tensors do
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_GRAPH_INITIALIZER = 5
_TENSOR_NAME, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 9, 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1

Span = tuple[int, int]


class Malformed(Exception):
    """Not a well-formed ONNX ModelProto; the message says where."""


class ExternalData(Exception):
    """A tensor refers to external data; the message names it."""


@dataclass(frozen=True)
class Scan:
    metadata: dict[str, str]
    initializer_data: tuple[Span, ...]  # the raw_data that counts (the last) of each top-level initializer


def scan_model(buf) -> Scan:
    """Check a whole serialized ModelProto (bytes or a memory map)."""
    walker = Walker(buf)
    metadata: dict[str, str] = {}
    spans: list[Span] = []
    graphs = metadata_bytes = 0
    for number, wire, value, _, _ in walker.fields(0, len(buf)):
        if number == _MODEL_METADATA:
            walker.need_message(wire, MODEL, number)
            metadata_bytes += value[1] - value[0]
            if metadata_bytes > MAX_METADATA_BYTES:
                raise Malformed(f"metadata larger than {MAX_METADATA_BYTES >> 20} MiB")
            key, text = walker.entry(value)
            if key in metadata:
                raise Malformed(f"metadata key {key!r} appears more than once")
            metadata[key] = text
        elif number == _MODEL_GRAPH:
            walker.need_message(wire, MODEL, number)
            graphs += 1
            for gnum, gwire, gvalue, _, _ in walker.fields(*value):
                if gnum == _GRAPH_INITIALIZER:
                    walker.need_message(gwire, GRAPH, gnum)
                    raw = walker.tensor(gvalue, "graph initializer")
                    if raw is not None:
                        spans.append(raw)
                else:
                    walker.child(GRAPH, gnum, gwire, gvalue, 2)
        else:
            walker.child(MODEL, number, wire, value, 1)
    if not graphs:
        raise Malformed("no graph in the file")
    return Scan(metadata, tuple(spans))


def referencing_copy(buf, referenced: set[Span], location: bytes) -> bytes:
    """The ModelProto in `buf` (already checked by `scan_model`) with the top-level initializers
    whose raw_data span is in `referenced` turned into external-data references to `location`
    at the offsets where those bytes lie in `buf`."""
    walker = Walker(buf)
    out = bytearray()
    for number, wire, value, start, end in walker.fields(0, len(buf)):
        if number != _MODEL_GRAPH:
            out += buf[start:end]
            continue
        graph = bytearray()
        for gnum, gwire, gvalue, gstart, gend in walker.fields(*value):
            if gnum == _GRAPH_INITIALIZER:
                graph += _message(_GRAPH_INITIALIZER, _referencing_tensor(walker, gvalue, referenced, location))
            else:
                graph += buf[gstart:gend]
        out += _message(_MODEL_GRAPH, graph)
    return bytes(out)


class Walker:
    def __init__(self, buf) -> None:
        self.buf = buf
        self.left = MAX_FIELDS

    def fields(self, start: int, end: int):
        """(number, wire type, value, field start, field end) for each field of the message in
        buf[start:end]; value is a varint's value or a length-delimited field's (start, end)."""
        pos = start
        while pos < end:
            self.left -= 1
            if self.left < 0:
                raise Malformed(f"more than {MAX_FIELDS:,} protobuf fields")
            field_start = pos
            key, pos = self._varint(pos, end)
            number, wire = key >> 3, key & 7
            if not 0 < number < 1 << 29:
                raise Malformed(f"invalid field number {number} at byte {field_start}")
            value = None
            if wire == 0:
                value, pos = self._varint(pos, end)
            elif wire == 2:
                length, pos = self._varint(pos, end)
                value = (pos, pos + length)
                pos += length
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                raise Malformed(f"invalid wire type {wire} at byte {field_start}")
            if pos > end:
                raise Malformed(f"field {number} at byte {field_start} runs past the end of its message")
            yield number, wire, value, field_start, pos

    def _varint(self, pos: int, end: int) -> tuple[int, int]:
        buf, result, shift = self.buf, 0, 0
        while pos < end:
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise Malformed(f"varint longer than 10 bytes at byte {pos}")
        raise Malformed(f"truncated at byte {pos}")

    def need_message(self, wire: int, kind: int, number: int) -> None:
        if wire != 2:
            raise Malformed(f"field {number} of a {_NAMES[kind]} must be a message (wire type {wire})")

    def child(self, kind: int, number: int, wire: int, value, depth: int) -> None:
        """Walk field `number` of a `kind` message if it can lead to a tensor; skip it otherwise."""
        if wire == 2 and kind in _KNOWN and number not in _KNOWN[kind] and value[1] - value[0] > MAX_UNKNOWN_BYTES:
            raise Malformed(f"unknown {_NAMES[kind]} field {number} holds {(value[1] - value[0]) >> 20} MiB")
        target = _CHILDREN[kind].get(number)
        if target is None:
            if (wire == 2 and kind != TENSOR and value[1] - value[0] > MAX_STRING_BYTES
                    and (kind not in _KNOWN or number in _KNOWN[kind]) and number not in _NUMBER_LISTS.get(kind, ())):
                raise Malformed(f"{_NAMES[kind]} field {number} holds {(value[1] - value[0]) >> 10:,} KiB; "
                                f"names and texts are limited to {MAX_STRING_BYTES >> 20} MiB")
            return
        self.need_message(wire, kind, number)
        if depth > MAX_DEPTH:
            raise Malformed(f"messages nested more than {MAX_DEPTH} deep")
        if target == TENSOR:
            self.tensor(value, f"{_NAMES[kind]} tensor")
            return
        for cnum, cwire, cvalue, _, _ in self.fields(*value):
            self.child(target, cnum, cwire, cvalue, depth + 1)

    def tensor(self, span: Span, where: str) -> Span | None:
        """Check one TensorProto; return the span of its raw_data (the last one counts)."""
        raw = name = None
        external = False
        for number, wire, value, _, _ in self.fields(*span):
            if number == _TENSOR_EXTERNAL_DATA or (number == _TENSOR_DATA_LOCATION and value == _EXTERNAL):
                external = True
            elif number == _TENSOR_RAW_DATA and wire == 2:
                raw = value
            elif number == _TENSOR_NAME and wire == 2:
                name = value
        if external:
            label = bytes(self.buf[name[0]:min(name[1], name[0] + 80)]).decode("utf-8", "replace") if name else ""
            raise ExternalData(f"{where} {label!r}")
        return raw

    def entry(self, span: Span) -> tuple[str, str]:
        """A StringStringEntryProto as (key, value); both must be UTF-8."""
        key = value = b""
        for number, wire, payload, _, _ in self.fields(*span):
            if number in (_ENTRY_KEY, _ENTRY_VALUE) and wire == 2:
                text = bytes(self.buf[payload[0]:payload[1]])
                key, value = (text, value) if number == _ENTRY_KEY else (key, text)
        try:
            return key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            shown = key.decode("utf-8", "backslashreplace")[:60]
            raise Malformed(f"metadata entry {shown!r} is not valid UTF-8") from None


def _referencing_tensor(walker: Walker, span: Span, referenced: set[Span], location: bytes) -> bytes:
    buf = walker.buf
    raw = None
    for number, wire, value, _, _ in walker.fields(*span):
        if number == _TENSOR_RAW_DATA and wire == 2:
            raw = value
    if raw not in referenced:
        return bytes(buf[span[0]:span[1]])
    out = bytearray()
    for number, wire, _, start, end in walker.fields(*span):
        if not (number == _TENSOR_RAW_DATA and wire == 2):
            out += buf[start:end]
    offset, length = raw[0], raw[1] - raw[0]
    for key, value in ((b"location", location), (b"offset", str(offset).encode()), (b"length", str(length).encode())):
        out += _message(_TENSOR_EXTERNAL_DATA, _message(_ENTRY_KEY, key) + _message(_ENTRY_VALUE, value))
    out += _varint_bytes(_TENSOR_DATA_LOCATION << 3) + _varint_bytes(_EXTERNAL)
    return bytes(out)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _message(number: int, payload: bytes) -> bytes:
    return _varint_bytes(number << 3 | 2) + _varint_bytes(len(payload)) + payload
