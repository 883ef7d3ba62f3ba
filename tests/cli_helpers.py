"""Test helpers for the command line: `tfrec-towers` subprocesses, and `tfrec-towers serve` on 127.0.0.1."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator, List, Optional

_LISTENING = re.compile(r"gRPC on 127\.0\.0\.1:(\d+)(?:, REST on 127\.0\.0\.1:(\d+))?")


def subprocess_env() -> dict:
    """The environment of CLI subprocesses: quiet TensorFlow, CPU only (PYTHONPATH is inherited)."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def cli(*args) -> List[str]:
    """The ``tfrec-towers`` command line of this interpreter's environment."""
    return [os.path.join(os.path.dirname(sys.executable), "tfrec-towers")] + [str(a) for a in args]


class ServeProcess:
    """A running ``tfrec-towers serve``: its ports, its output so far, its peak memory."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.grpc_port: Optional[int] = None
        self.rest_port: Optional[int] = None
        self.returncode: Optional[int] = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = next(filter(None, map(_LISTENING.search, list(self.lines))), None)
            if found:
                self.grpc_port = int(found.group(1))
                self.rest_port = int(found.group(2)) if found.group(2) else None
                return
            time.sleep(0.05)
        raise AssertionError(f"the server did not start listening within {timeout}s:\n{self.output()[-5000:]}")

    def wait_for_line(self, text: str, timeout: float) -> float:
        """Block until an output line contains ``text``; the time.monotonic() it was seen."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                f"no line with {text!r} within {timeout}s:\n{self.output()[-5000:]}"
            time.sleep(0.01)
        return time.monotonic()

    def reset_peak_memory(self) -> bool:
        """Reset ``VmHWM`` to the current RSS (``/proc/<pid>/clear_refs``, Linux >= 4.0); False if refused."""
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def memory_kb(self, field: str) -> int:
        """A ``/proc/<pid>/status`` memory field in kB: ``VmHWM`` (peak resident set) or ``VmRSS``."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)


@contextlib.contextmanager
def serve_in_subprocess(base, *args, start_timeout: float = 180.0) -> Iterator[ServeProcess]:
    """``tfrec-towers serve BASE --port 0 ARGS``; stopped with SIGINT on exit (killed if it hangs), its exit
    status then in ``returncode``."""
    proc = subprocess.Popen(cli("serve", base, "--port", 0, *args), env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    server = ServeProcess(proc)
    try:
        server.wait_listening(start_timeout)
        yield server
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            server.returncode = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server._reader.join(timeout=10)
