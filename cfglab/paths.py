"""What the file system accepts as a name: the checks every path argument and config key meets
before any work. Its own small module, so the exact commands (`cfglab parse`, `prob`) check
their arguments without importing the config machinery (YAML, the schema: ~25 ms of start-up).
"""

from __future__ import annotations

import os

from cfglab.errors import ConfigError

MAX_NAME_BYTES = 255  # one file or folder name, in bytes (ext4, XFS, APFS, NTFS: 255)
MAX_PATH_BYTES = 4095  # a whole path (Linux PATH_MAX, less its NUL)


def check_path_text(key: str, text: str) -> None:
    """ConfigError for a path (or a name that becomes one) the file system would refuse: a NUL
    byte, a component over MAX_NAME_BYTES bytes, or over MAX_PATH_BYTES bytes in all."""
    raw = os.fsencode(text)  # bytes as the file system sees them (argv's undecodable too)
    if b"\x00" in raw:
        raise ConfigError(
            f"{key} {shown_name(text)} holds a NUL byte, which no file name may; remove it"
        )
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > MAX_NAME_BYTES:
        raise ConfigError(
            f"{key} {shown_name(text)}: a name of {len(longest)} bytes, over the "
            f"{MAX_NAME_BYTES} a file system allows per file or folder name; give a shorter one"
        )
    if len(raw) > MAX_PATH_BYTES:
        raise ConfigError(
            f"{key} {shown_name(text)}: a path of {len(raw)} bytes, over the {MAX_PATH_BYTES} a "
            "file system allows; give a shorter one"
        )


def shown_name(text: str) -> str:
    """text quoted for a one-line message, cut when long."""
    return repr(text) if len(text) <= 60 else f"{text[:40]!r}... ({len(os.fsencode(text))} bytes)"
