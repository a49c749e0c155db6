"""Reading the user's text files (configs, manifests, captions): a file that is not UTF-8 is an error
naming the file, line and column, not a `UnicodeDecodeError` from deep inside a parser."""

from __future__ import annotations

from pathlib import Path


def read_utf8(path: str | Path) -> str:
    """The file's text (a UTF-8 byte-order mark is dropped); ValueError naming the first bad byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise ValueError(f"{path}: line {line}, column {column}: byte 0x{data[start]:02x} is not UTF-8; "
                         "save the file as UTF-8") from None
