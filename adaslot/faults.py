"""I/O faults as one line: which path, what happened, what is kept, what to do.

`adaslot.cli.main` is the one place that catches an OSError (a full disk, a size limit, a read-only or
foreign folder, a failing disk) and prints `describe(error)`; no command has its own try/except for them.
What survives depends on the command, so the code that writes registers it with `note()` as it goes:
train names the last good checkpoint (read from the run folder when the fault happens), eval says that
metrics.json was not written, and the command says what rerunning it does. That "kept" is true is the job of
the writers: none leaves a half-written file under its real name (adaslot/files.py `atomic_path`).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

# errno -> (what happened, what to do about it)
_FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EFBIG: ("file too large for the file system or `ulimit -f`",
                  "raise the limit or write to another file system"),
    errno.EROFS: ("read-only file system", "write to a writable folder (or remount it read-write)"),
    errno.EACCES: ("permission denied", "fix the permissions or use another folder"),
    errno.EPERM: ("operation not permitted", "fix the permissions or use another folder"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "fix the path"),
    errno.EEXIST: ("a file is in the way", "remove it or choose another path"),
    errno.EISDIR: ("a folder, not a file", "give a file name"),
    errno.EIO: ("input/output error: the disk or the file is damaged",
                "check the disk (dmesg) or restore the file"),
    errno.ENOENT: ("no such file or folder", "check the path"),
}
_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # only ever raised by writing

_kept: Callable[[], str] | str | None = None
_rerun: str = ""


def note(kept: Callable[[], str] | str | None = None, rerun: str | None = None) -> None:
    """Register what the running command keeps if a fault stops it now, and what rerunning it does.

    kept: a text, or a function computing it when the fault happens ("the last good checkpoint is ...");
    rerun: completes "rerun the same command ..." (e.g. "to continue"). None leaves a part unchanged."""
    global _kept, _rerun
    if kept is not None:
        _kept = kept
    if rerun is not None:
        _rerun = rerun


def reset() -> None:
    """Forget the notes (the CLI calls this before each command)."""
    global _kept, _rerun
    _kept, _rerun = None, ""


def describe(e: OSError) -> str:
    """One line: `cannot write PATH: what happened (ERRNO); what is kept; what to do, then rerun ...`."""
    what, fix = _FAULTS.get(e.errno or -1, (None, None))
    if what is None:
        text = str(e.strerror or e).strip() or type(e).__name__
        what = text.splitlines()[0][:200]
    code = errno.errorcode.get(e.errno) if e.errno is not None else None
    head = what + (f" ({code})" if code else "")
    write = e.errno in _WRITES
    path = e.filename2 if write and e.filename2 else e.filename  # a rename: its target
    if path is not None or write:
        head = f"{'cannot write ' if write else ''}{path or 'a file'}: {head}"
    parts = [head]
    try:
        kept = _kept() if callable(_kept) else _kept
    except Exception:  # noqa: BLE001  (the note is a courtesy: never hide the fault behind another error)
        kept = None
    if kept:
        parts.append(kept)
    rerun = f"rerun the same command {_rerun}".rstrip()
    parts.append(f"{fix}, then {rerun}" if fix else rerun)
    return "; ".join(parts)
