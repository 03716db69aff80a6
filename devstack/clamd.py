"""A real clamd (Debian's ``clamav-daemon``) running as a user process, for the demo, tests and bench.

Design decisions:

* Its own config file in a work directory the caller owns, never ``/etc/clamav``: a TCP socket on a
  free 127.0.0.1 port (and a unix socket beside it, so both address forms can be exercised),
  ``Foreground yes`` so the process is ours to stop, the log, pid file and stream temp files in
  the work directory.
* The database is the repo's small one (``devstack/clamav``): it loads in well under a second and
  needs no network; clamd accepts unofficial databases (``OfficialDatabaseOnly no``) and loads
  without a bytecode database, so nothing official is required.
* ``AlertExceedsMax yes``: without it clamd reports a file or archive over ``MaxFileSize`` /
  ``MaxScanSize`` / ``MaxRecursion`` as clean. With it clamd answers
  ``Heuristics.Limits.Exceeded.<Limit> FOUND``, which the scanner reports as infected: fail closed,
  as production must be configured too. ``StreamMaxLength`` is separate: clamd refuses a longer
  stream outright (``INSTREAM size limit exceeded``) and the scanner exits 3.
* The limits are arguments so a test can provoke each outcome with small files; the defaults are
  above the scanner's default ``FILESCAN_MAX_FILE_SIZE`` (100 MiB) so ordinary scans never meet them.
* Readiness is clamd answering ``PING``, polled with a deadline; a clamd that dies while starting
  raises with the tail of its log.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from controller.clamav import ClamdAddress, ClamdClient, ClamdError

CLAMD_BINARY = Path("/usr/sbin/clamd")
DATABASE_DIR = Path(__file__).resolve().parent / "clamav"
"""The signature database the repo ships (EICAR and a test marker)."""

MiB = 1024 * 1024


class ClamdStartError(RuntimeError):
    """clamd exited or did not answer PING in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ClamdProcess:
    """A started clamd. Use :meth:`start`; stop with :meth:`stop` or a ``with`` block."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    database_dir: Path
    unix_socket: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        """``tcp://127.0.0.1:PORT``, the form ``FILESCAN_CLAMD_ADDRESS`` takes."""
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def unix_address(self) -> str:
        """``unix:/path/clamd.sock``, the same clamd over its unix socket."""
        return f"unix:{self.unix_socket}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "clamd.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "clamd.log"

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        stream_max_length: int = 128 * MiB,
        max_file_size: int = 128 * MiB,
        max_scan_size: int = 512 * MiB,
        database_dir: Path = DATABASE_DIR,
        timeout: float = 60.0,
    ) -> ClamdProcess:
        """Write a config into ``workdir`` and start clamd; returns once it answers PING.

        Sizes are bytes. ``timeout`` bounds the wait for PING (the repo's database loads in well
        under a second; a full official one takes 10-20 s).
        """
        if not CLAMD_BINARY.exists():
            raise ClamdStartError(f"{CLAMD_BINARY} not found: install clamav-daemon (make setup)")
        workdir = workdir.resolve()
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        unix_socket = workdir / "clamd.sock"
        if len(str(unix_socket)) > 100:
            raise ValueError(f"work directory path too long for a unix socket: {workdir}")
        last_error: ClamdStartError | None = None
        for _ in range(3):  # the free port can be taken between probing and clamd binding it
            port = _free_port()
            config = _config(
                workdir,
                port=port,
                unix_socket=unix_socket,
                database_dir=database_dir.resolve(),
                stream_max_length=stream_max_length,
                max_file_size=max_file_size,
                max_scan_size=max_scan_size,
            )
            (workdir / "clamd.conf").write_text(config)
            with (workdir / "clamd.out").open("ab") as out:
                process = subprocess.Popen(
                    [str(CLAMD_BINARY), "--config-file", str(workdir / "clamd.conf")],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            clamd = cls(process, port, workdir, database_dir.resolve(), unix_socket)
            try:
                clamd._wait_until_ready(timeout)
            except ClamdStartError as error:
                clamd.stop()
                last_error = error
                if "already in use" not in str(error):
                    raise
                continue
            return clamd
        raise last_error or ClamdStartError("clamd could not bind a free port")

    def _wait_until_ready(self, timeout: float) -> None:
        client = ClamdClient(ClamdAddress.parse(self.address), connect_timeout=1.0, timeout=5.0)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ClamdStartError(
                    f"clamd exited with code {self.process.returncode} while starting:\n{self.log_tail()}"
                )
            with contextlib.suppress(ClamdError):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise ClamdStartError(f"clamd did not answer PING within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of clamd's log and its stdout/stderr, for error messages."""
        text = ""
        for path in (self.log_path, self.workdir / "clamd.out"):
            with contextlib.suppress(OSError):
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if clamd has not exited within ``timeout`` seconds. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.unix_socket.unlink(missing_ok=True)

    def restart(self, timeout: float = 60.0) -> None:
        """Start clamd again after :meth:`stop`, with the same config and so the same address
        (the fault tests take clamd away and bring it back)."""
        if self.process.poll() is None:
            return
        with (self.workdir / "clamd.out").open("ab") as out:
            self.process = subprocess.Popen(
                [str(CLAMD_BINARY), "--config-file", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._stopped = False
        self._wait_until_ready(timeout)

    def __enter__(self) -> ClamdProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _config(
    workdir: Path,
    *,
    port: int,
    unix_socket: Path,
    database_dir: Path,
    stream_max_length: int,
    max_file_size: int,
    max_scan_size: int,
) -> str:
    settings = {
        "Foreground": "yes",
        "TCPSocket": str(port),
        "TCPAddr": "127.0.0.1",
        "LocalSocket": str(unix_socket),
        "FixStaleSocket": "yes",
        "DatabaseDirectory": str(database_dir),
        "OfficialDatabaseOnly": "no",
        "TemporaryDirectory": str(workdir / "tmp"),
        "PidFile": str(workdir / "clamd.pid"),
        "LogFile": str(workdir / "clamd.log"),
        "LogTime": "yes",
        # Two cores here; a few threads are plenty for tests and keep clamd's footprint small.
        "MaxThreads": "4",
        "StreamMaxLength": str(stream_max_length),
        "MaxFileSize": str(max_file_size),
        "MaxScanSize": str(max_scan_size),
        # Fail closed: over-limit files and archives are reported, not passed as clean.
        "AlertExceedsMax": "yes",
    }
    return "".join(f"{key} {value}\n" for key, value in settings.items())
