"""TF Serving's model layout: BASE/NAME/<version>/ with integer versions, written atomically.

A version is assembled in ``BASE/NAME/.tmp-<version>-<host>-<pid>`` (same filesystem) and renamed
into place, so a server polling BASE/NAME sees either no version or a complete one: TF Serving
ignores children whose names are not integers, and ``rename`` of a directory is atomic on POSIX.
Versions are unix timestamps, made strictly increasing (``max(now, latest + 1)``) so two exports in
the same second still order correctly; an existing version is never overwritten.

Concurrent exports to one BASE/NAME (two hosts' cron jobs, a retry beside a slow run) take turns:
choosing the number, writing and publishing a version hold an exclusive ``flock`` on ``BASE/.NAME.lock``,
so each picks a number above the last one published and none fails after doing its work. Only that
final step is serialized; embedding the catalog and building the index run in parallel.
"""
import contextlib
import fcntl
import os
import shutil
import socket
import time
from typing import Iterator, List, Tuple

# The layout itself (version names, the staging prefix, listing) is ``layout.py``, shared with serving;
# list_versions and latest_version stay importable from here.
from tfrec_towers.export.layout import STAGING_PREFIX, latest_version, list_versions  # noqa: F401


__all__ = ["staged_version"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(model_dir: str, log=print) -> List[str]:
    """Delete staging directories left by killed exports of this host (their pid is gone)."""
    removed, host = [], socket.gethostname()
    for name in os.listdir(model_dir) if os.path.isdir(model_dir) else []:
        parts = name[len(STAGING_PREFIX):].rsplit("-", 2) if name.startswith(STAGING_PREFIX) else []
        if len(parts) == 3 and parts[1] == host and parts[2].isdigit() and not _pid_alive(int(parts[2])):
            shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
            removed.append(name)
    if removed:
        log(f"removed {len(removed)} staging director{'y' if len(removed) == 1 else 'ies'} of interrupted exports")
    return removed


@contextlib.contextmanager
def publish_lock(base_dir: str, name: str, log=print) -> Iterator[None]:
    """Hold the exclusive lock on publishing versions of BASE/NAME (waiting for another holder).

    The lock file sits beside BASE/NAME, not in it, so the model directory keeps only versions (and
    staging directories); it is never deleted, since unlinking a lock file lets two processes lock two
    different files. The lock goes with the process: a killed export never leaves it held.
    """
    path = os.path.join(os.path.abspath(base_dir), f".{name}.lock")
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another export to {os.path.join(os.path.dirname(path), name)} to publish its version")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # released when the file closes


@contextlib.contextmanager
def staged_version(base_dir: str, name: str, log=print) -> Iterator[Tuple[str, int]]:
    """``with staged_version(base, name) as (tmp_dir, version):`` write into tmp_dir; on a clean exit
    it becomes BASE/NAME/<version>, on an exception it is deleted and no version appears. Holds
    ``publish_lock`` throughout, so concurrent exports get distinct, increasing versions."""
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"model name must be a plain directory name, got {name!r}")
    model_dir = os.path.join(os.path.abspath(base_dir), name)
    os.makedirs(model_dir, exist_ok=True)
    with publish_lock(base_dir, name, log):
        remove_stale_staging(model_dir, log)
        version = max(int(time.time()), (latest_version(model_dir) or 0) + 1)
        tmp = os.path.join(model_dir, f"{STAGING_PREFIX}{version}-{socket.gethostname()}-{os.getpid()}")
        os.makedirs(tmp)
        try:
            yield tmp, version
            final = os.path.join(model_dir, str(version))
            if os.path.exists(final):  # a writer that ignores the lock
                raise FileExistsError(f"{final} appeared while exporting; versions are never overwritten")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
