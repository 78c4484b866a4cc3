"""Shared by every script: the two kinds of error the entry points report as one line, and atomic writes.
No torch here, so torch-free tools (summarize.py) can use it."""
import os
import tempfile


class InputError(Exception):
    """Bad input from the user (flags, files, data): reported as one line, exit code 2, no traceback."""


class RunError(Exception):
    """A run that cannot go on (a failed write, a non-finite loss, an interruption): one line, exit code 1
    (or 128 + the signal number for an interruption)."""
    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code



def printable_path(path):
    """A file name as text for tables, pages and fixes files: the path itself, except that bytes which are not UTF-8
    (names scraped from the web, held by Python as surrogates) are written as \\xNN escapes. The same name always
    gives the same text, so files written with it can be matched against the data set again."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def atomic_write(path, write):
    """Call write(binary file) on a temporary file next to path, then rename it into place: readers see the old
    file or the new one, never a truncated one. A failed write raises RunError and leaves the old file intact."""
    folder = os.path.dirname(path) or "."
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files owner-only; results are for the whole group to read
        os.replace(tmp, path)
    except OSError as e:  # disk full, permissions, a folder that vanished: the previous file stays as it was
        raise RunError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
