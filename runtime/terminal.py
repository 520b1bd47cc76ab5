"""What may reach a terminal: every string that comes from a model (labels, tensor names), a file
name or a library's message goes through `printable` on every text path (results, CSV, errors),
so none can move the cursor, recolour, retitle or split a line. JSON output escapes the same
characters itself (`json.dumps` with ASCII escapes)."""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` with each character Python does not call printable (controls such as ESC and BEL,
    line and paragraph separators, bidi overrides, lone surrogates) written as an escape; the
    bytes of a file name that is not UTF-8 come back as \\xNN."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if c in _NAMED:
        return _NAMED[c]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
