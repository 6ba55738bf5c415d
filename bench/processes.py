"""The processes a benchmark run starts — the fake upstream, qwenproxy under gunicorn, and
peer proxies — each on a free loopback port, with its output in a log file; plus what
/proc tells about them (worker pid, RSS, CPU time)."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.httpclient import simple_get

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if top > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Process:
    """A child process in its own session; `stop()` ends it (and only it and its group)."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.name = name
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self, tail: int = 4000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, sig)  # our own child's session: its workers go too
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(5)
        if not self._log.closed:
            self._log.close()

    def wait_http(self, port: int, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            try:
                if simple_get(HOST, port, path, timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            except Exception:  # noqa: BLE001 - half-started servers answer oddly
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f} s:\n{self.output()}")


# --- the fake upstream -----------------------------------------------------------------


class FakeProcess(Process):
    def __init__(self, workdir: Path, chunks: int, chunk_delay: float, hold: bool = False):
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "bench.fake_upstream",
            "--port",
            str(self.port),
            "--chunks",
            str(chunks),
            "--chunk-delay",
            str(chunk_delay),
        ] + (["--hold"] if hold else [])
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
        tag = "fake-hold" if hold else "fake"
        super().__init__(tag, command, ROOT, env, workdir / f"{tag}-{self.port}.log")
        self.url = f"http://{HOST}:{self.port}"
        self.wait_http(self.port, "/health", 20)

    def stats(self) -> dict:
        return json.loads(simple_get(HOST, self.port, "/stats")[1])


# --- qwenproxy -------------------------------------------------------------------------

PROXY_KEY = "bench-proxy-key-0123456789"


def write_creds(path: Path, fake: FakeProcess, expires_in: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    creds = {
        "access_token": "tok-bench-initial",
        "refresh_token": "refresh-bench-initial",
        "token_type": "Bearer",
        "expiry_date": int((time.time() + expires_in) * 1000),
        "resource_url": fake.url,
    }
    path.write_text(json.dumps(creds))
    os.chmod(path, 0o600)
    return path


class ProxyProcess(Process):
    """`python -m qwenproxy serve`: gunicorn + 1 gevent worker, every feature on."""

    def __init__(
        self,
        workdir: Path,
        fake: FakeProcess,
        token_expires_in: float = 3600.0,
        extra_env: dict[str, str] | None = None,
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.creds = write_creds(workdir / "qwen" / "oauth_creds.json", fake, token_expires_in)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(workdir),
            "PYTHONPATH": str(ROOT),
            "HOST": HOST,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "1",
            "QWEN_OAUTH_CREDS": str(self.creds),
            "QWEN_OAUTH_URL": fake.url,
            "LLM_BACKEND": "qwen-oauth",
            "PROXY_API_KEY": PROXY_KEY,
            "QWENPROXY_DATA_DIR": str(workdir / "data"),
            # Every feature on (these are the defaults, spelled out).
            "DISABLE_ACCOUNTING": "false",
            "LOOP_DETECTION": "true",
            "REDACT_API_KEYS_IN_PROMPTS": "true",
            **(extra_env or {}),
        }
        super().__init__(
            "qwenproxy",
            [sys.executable, "-m", "qwenproxy", "serve"],
            workdir,
            env,
            workdir / "qwenproxy.log",
        )
        self.url = f"http://{HOST}:{self.port}"
        self.wait_http(self.port, "/health", 60)
        self.worker_pid = self._find_worker()

    def _find_worker(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = children(self.pid)
            if kids:
                return kids[0]
            time.sleep(0.05)
        raise RuntimeError("no gunicorn worker found")

    def stop(self, sig: int = signal.SIGQUIT, timeout: float = 15.0) -> None:
        super().stop(sig, timeout)


# --- /proc -----------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except OSError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children(current))
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in descendants(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def tree_rss_kb(pid: int) -> int:
    total = 0
    for p in descendants(pid):
        try:
            total += rss_kb(p)
        except OSError:
            pass
    return total
