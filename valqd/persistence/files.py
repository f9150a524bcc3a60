"""Small whole files the server keeps besides the AOF (the ACL file): read whole, and
replaced atomically so that a crash leaves the old file or the new one, never half of one."""

import os

from .aof import fsync_directory


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def replace_file(path: str, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it and rename it over `path`."""
    temp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    fsync_directory(path)
