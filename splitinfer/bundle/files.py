"""Reading and writing bundle files: JSON with one-line errors, atomic writes."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from splitinfer.errors import FormatError

_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{what} not found at {path}: {fix}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{what} at {path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(data, dict):
        raise FormatError(f"{what} at {path} should be a JSON object, got {type(data).__name__}")
    return data


def check_version(data: dict[str, Any], readable: int | tuple[int, ...], path: Path,
                  fix: str) -> None:
    readable = (readable,) if isinstance(readable, int) else tuple(readable)
    got = data.get("version")
    if got not in readable:
        known = " or ".join(str(v) for v in readable)
        raise FormatError(f"{path}: version {got!r} is not supported, this build reads version "
                          f"{known}; {fix}")


def field(data: dict[str, Any], key: str, path: Path) -> Any:
    try:
        return data[key]
    except KeyError:
        raise FormatError(f"{path}: missing field {key!r} (see docs/FORMATS.md)") from None


def umask_mode(path: str | os.PathLike) -> None:
    """Give a file or directory made by `tempfile` (0600/0700) the mode a plain open/mkdir
    would: a server running as another user must be able to read the bundle."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_UMASK)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON so that a reader never sees half a file (temp file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask_mode(tmp)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
