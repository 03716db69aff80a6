"""The scanner's benchmark: is streaming over HTTP into clamd as fast as handing clamd a local file,
and does the scanner's memory stay flat as files grow?

(a) ``filescan scan`` (a fresh process as in a Job, run by a venv holding exactly what the image
installs: requirements.txt and this source tree, not the dev venv's extra tools, which add start-up
work a Job never pays) fetches a 200 MB file from a local HTTP server (stdlib, serving with
sendfile so it takes little of the two cores) and streams it into clamd; (b) ``clamdscan --stream``
sends the same file from disk to the same clamd, and a raw INSTREAM of the local file from this
process is printed as a second baseline. Each is run several times, interleaved; medians are
compared (goal: a ratio of at most 1.15). Then the peak RSS of ``filescan scan`` for a 20 MB and a
500 MB file, from ``wait4``'s rusage of that one child (goal: the same within 10 MB, under 80 MB).

clamd runs with limits above 500 MB so every scan is a real one. File contents are random, so
nothing compresses or short-cuts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from controller.clamav import ClamdAddress, ClamdClient
from devstack.clamd import ClamdProcess

MB = 1_000_000
MiB = 1024 * 1024
ROUNDS = 5
REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "requirements.txt"
VENV_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "filescan-bench"


def shipped_python() -> Path:
    """The Python of a venv with the image's packages (``requirements.txt``, ``--no-deps`` as the
    Dockerfile installs them), built once per requirements.txt; the source tree comes from
    ``PYTHONPATH`` (see :func:`_filescan_command`)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = VENV_CACHE / f"scanner-venv-{digest}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    print(f"[bench] building {venv} with the image's packages (once per requirements.txt)...", flush=True)
    partial = venv.with_name(venv.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True)
    subprocess.run(
        [str(partial / "bin" / "pip"), "install", "--quiet", "--no-deps", "--requirement", str(REQUIREMENTS)],
        check=True,
    )
    partial.rename(venv)
    return python


def _compile_sources(python: Path) -> None:
    """Byte-compile the source tree as the Dockerfile does (``PYTHONDONTWRITEBYTECODE`` is set in
    the image and may be here, so nothing else would write the ``.pyc`` files)."""
    subprocess.run([str(python), "-m", "compileall", "-q", str(REPO / "controller")], check=True)


def _filescan_command(python: Path) -> tuple[list[str], dict[str, str]]:
    """``filescan`` as the image runs it, and the environment without the shell's FILESCAN_*."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FILESCAN_")}
    env["PYTHONPATH"] = str(REPO)
    return [str(python), "-m", "controller.cli"], env


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as out:
        remaining = size
        while remaining:
            piece = min(remaining, 4 * MiB)
            out.write(os.urandom(piece))
            remaining -= piece


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _SendfileHandler(SimpleHTTPRequestHandler):
    """Serves files with sendfile(2): the server costs almost no CPU, as a remote one would not."""

    def copyfile(self, source: Any, outputfile: Any) -> None:
        self.wfile.flush()
        self.connection.sendfile(source)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _start_file_server(directory: Path) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_SendfileHandler, directory=str(directory)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="bench-file-server", daemon=True).start()
    return server


def _run_filescan(python: Path, url: str, clamd: ClamdProcess, workdir: Path) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (KiB) and CPU seconds (user + system) of one ``filescan scan`` process."""
    filescan, env = _filescan_command(python)
    env |= {
        "FILESCAN_ALLOWED_FILE_HOSTS": "127.0.0.1",
        "FILESCAN_ALLOW_HTTP": "true",
        "FILESCAN_CLAMD_ADDRESS": clamd.address,
        "FILESCAN_LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            *filescan,
            "scan",
            "--url",
            url,
            "--max-bytes",
            str(1024 * MiB),
            "--termination-log",
            str(workdir / "termination-log"),
        ],
        env=env,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or '"verdict":"clean"' not in output:
        raise RuntimeError(f"filescan scan failed ({process.returncode}): {output}")
    return elapsed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def _run_startup(python: Path, workdir: Path) -> float:
    """Seconds for ``filescan scan`` to start, refuse a URL and exit: the fixed cost of a process."""
    filescan, env = _filescan_command(python)
    started = time.perf_counter()
    completed = subprocess.run(
        [*filescan, "scan", "--url", "https://not-allowed.invalid/", "--termination-log", str(workdir / "tl")],
        env=env | {"FILESCAN_LOG_LEVEL": "WARNING"},
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != 3:
        raise RuntimeError(f"expected a refused URL (exit 3), got {completed.returncode}")
    return elapsed


def _run_clamdscan(path: Path, clamd: ClamdProcess) -> float:
    started = time.perf_counter()
    completed = subprocess.run(
        ["clamdscan", "--stream", "--no-summary", f"--config-file={clamd.config_path}", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0 or not completed.stdout.rstrip().endswith(": OK"):
        raise RuntimeError(f"clamdscan failed ({completed.returncode}): {completed.stdout}{completed.stderr}")
    return elapsed


def _timed_instream(clamd: ClamdProcess, open_chunks: Callable[[contextlib.ExitStack], Iterable[bytes]]) -> float:
    """Seconds to open a source (``open_chunks`` enters what it opens on the stack), stream it into
    clamd from this process and get the verdict, which must be clean."""
    client = ClamdClient(ClamdAddress.parse(clamd.address))
    started = time.perf_counter()
    with contextlib.ExitStack() as opened, client.instream() as session:
        for chunk in open_chunks(opened):
            session.send(chunk)
        reply = session.finish()
    elapsed = time.perf_counter() - started
    if reply.infected:
        raise RuntimeError(f"INSTREAM found {reply.signature}")
    return elapsed


def _run_http_instream(url: str, clamd: ClamdProcess) -> float:
    """The same download streamed into clamd by this (already started) process, hashing nothing:
    what any Python streamer pays for the HTTP hop on these cores, without the scanner's own work."""

    def download(opened: contextlib.ExitStack) -> Iterable[bytes]:
        http = opened.enter_context(httpx.Client())
        return opened.enter_context(http.stream("GET", url)).iter_raw()

    return _timed_instream(clamd, download)


def _run_raw_instream(path: Path, clamd: ClamdProcess) -> float:
    def read(opened: contextlib.ExitStack) -> Iterable[bytes]:
        source = opened.enter_context(path.open("rb"))
        return iter(partial(source.read, 256 * 1024), b"")

    return _timed_instream(clamd, read)


def main() -> None:
    python = shipped_python()
    _compile_sources(python)
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        workdir = Path(tmp)
        files = workdir / "files"
        files.mkdir()
        sizes = {"f200": 200 * MB, "f20": 20 * MB, "f500": 500 * MB}
        for name, size in sizes.items():
            _write_random(files / name, size)
        server = _start_file_server(files)
        port = server.server_address[1]
        clamd = ClamdProcess.start(
            workdir / "clamd",
            stream_max_length=1024 * MiB,
            max_file_size=1024 * MiB,
            max_scan_size=2048 * MiB,
        )
        try:
            url = f"http://127.0.0.1:{port}/f200"
            _run_filescan(python, url, clamd, workdir)  # warm the page cache and clamd
            streamed, baseline, raw, hop, startup, cpu = [], [], [], [], [], []
            for _ in range(ROUNDS):
                startup.append(_run_startup(python, workdir))
                wall, _, cpu_seconds = _run_filescan(python, url, clamd, workdir)
                streamed.append(wall)
                cpu.append(cpu_seconds)
                baseline.append(_run_clamdscan(files / "f200", clamd))
                raw.append(_run_raw_instream(files / "f200", clamd))
                hop.append(_run_http_instream(url, clamd))
            rss = {
                name: _run_filescan(python, f"http://127.0.0.1:{port}/{name}", clamd, workdir)[1]
                for name in ("f20", "f500")
            }
            version = ClamdClient(ClamdAddress.parse(clamd.address)).version()
        finally:
            clamd.stop()
            server.shutdown()
            server.server_close()

    a, b, c, h, s = (statistics.median(values) for values in (streamed, baseline, raw, hop, startup))
    ratio = a / b
    rss_20, rss_500 = (rss[name] / 1024 for name in ("f20", "f500"))
    print(f"machine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, {version}")
    print(f"200 MB, median of {ROUNDS} runs each:")
    print(f"  (a) filescan scan over HTTP into clamd : {a:6.2f} s   runs {_fmt(streamed)}")
    print(f"  (b) clamdscan --stream of the local file: {b:6.2f} s   runs {_fmt(baseline)}")
    print(f"      raw INSTREAM of the local file      : {c:6.2f} s   runs {_fmt(raw)}")
    print(f"      HTTP into INSTREAM, in-process, no hash: {h:5.2f} s   runs {_fmt(hop)}")
    print(f"      filescan start-up alone (no I/O)    : {s:6.2f} s   runs {_fmt(startup)}")
    print(f"      CPU (user+sys) of filescan in (a)   : {statistics.median(cpu):6.2f} s   runs {_fmt(cpu)}")
    print(f"  ratio a/b: {ratio:.2f} (goal <= 1.15): {'met' if ratio <= 1.15 else 'NOT met'}")
    print(f"  ratio (a - start-up)/b: {(a - s) / b:.2f}")
    print(f"peak RSS of filescan scan: 20 MB file {rss_20:.1f} MiB, 500 MB file {rss_500:.1f} MiB")
    flat = abs(rss_500 - rss_20) <= 10 * MB / MiB and max(rss_20, rss_500) < 80
    print(f"  goal (same within 10 MB, under 80 MB): {'met' if flat else 'NOT met'}")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    main()
