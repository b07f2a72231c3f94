"""Text from a tenant made safe to show: a job name or an error is input from someone who may
be hostile, and a terminal obeys escape sequences (the CLI) while a reader trusts what a
page shows in order (the status page). One rule for both."""

from __future__ import annotations

_SAFE_CONTROLS = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(text: str) -> str:
    """``text`` with C0/C1 control characters, DEL and lone surrogates as visible escapes."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _SAFE_CONTROLS:
            out.append(_SAFE_CONTROLS[ch])
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code < 0xE000 or code in (0x200E, 0x200F, 0x202A, 0x202B, 0x202C):
            # Surrogates cannot be printed; bidi overrides reorder what a reader sees.
            out.append(f"\\u{code:04x}")
        elif 0x202D <= code <= 0x202E or 0x2066 <= code <= 0x2069:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
