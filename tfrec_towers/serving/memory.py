"""Returning a large request's memory to the system once it has been answered.

A request's intermediate tensors grow with its rows: a top-k request scores every row against the
catalog and gathers a re-rank shortlist of embeddings per row, about 0.2 MB a row for a 5,000-item
``portable`` export (k 100, 128-d; see serving/README.md). Two things kept that memory after the
request, so that one 9,999-row request left a server at 1.9 GB instead of 0.8 GB for good:

* TensorFlow's oneDNN CPU allocator (on by default on x86, ``TF_ENABLE_ONEDNN_OPTS``) serves every
  tensor of 4 KB or more from a BFC pool that grows to the largest working set seen and never shrinks.
  ``tfrec-towers serve`` turns oneDNN off before TensorFlow loads (unless the environment sets the
  variable): tensors then come from malloc, and the large ones go back to the system when freed. It
  cannot be turned off once TensorFlow is imported, so a server embedded in another process keeps
  whatever that process chose.
* glibc keeps freed memory in its heaps (one arena per serving thread). ``after_request`` asks for
  ``malloc_trim(0)``, which hands their free pages back, after requests of at least ``TRIM_AFTER_ROWS``
  rows; it costs milliseconds, so it runs on a thread of its own, shortly after the request (its
  answer is being sent, and the requests that end meanwhile share the trim). Elsewhere than glibc
  (musl, macOS) it does nothing.
"""
import ctypes
import ctypes.util
import threading
import time
from typing import Callable, Optional

#: Requests with at least this many rows are followed by a trim (smaller ones leave little behind).
TRIM_AFTER_ROWS = 256
#: A trim waits this long after the request that asked for it (its answer is being sent, and the
#: requests that end meanwhile share the trim).
_SETTLE_S = 0.2


def _malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class _Returner:
    """The process's one trim thread (the heap is the process's), started on first use."""

    def __init__(self):
        self.trims = 0
        self._trim = _malloc_trim()
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def ask(self) -> None:
        if self._trim is None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="model-server-trim", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            time.sleep(_SETTLE_S)
            self._wanted.clear()
            self._trim(0)
            self.trims += 1


_RETURNER = _Returner()


def can_return_memory() -> bool:
    """Whether this process's allocator can be trimmed (glibc)."""
    return _RETURNER._trim is not None


def after_request(rows: int) -> None:
    """A request of ``rows`` rows has been computed: from ``TRIM_AFTER_ROWS`` rows on, trim the heap
    once its answer is on its way (``_SETTLE_S`` later, on the trim thread)."""
    if rows >= TRIM_AFTER_ROWS:
        _RETURNER.ask()
