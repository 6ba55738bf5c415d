"""Peer proxies to compare with: LiteLLM's proxy, installed on demand into
bench/.venv-litellm from bench/requirements-peers.txt and pointed at the fake upstream.

LiteLLM is kept off the network: every URL it would fetch at start is forced local, and
any stray HTTP(S) client call that honours proxy variables is sent to a closed loopback
port instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.processes import HOST, FakeProcess, Process, free_port

BENCH = Path(__file__).resolve().parent
LITELLM_VENV = BENCH / ".venv-litellm"
PEER_REQUIREMENTS = BENCH / "requirements-peers.txt"
LITELLM_KEY = "sk-bench-litellm-master"
INSTALL_TIMEOUT_S = 900
DEAD_END = "http://127.0.0.1:9"  # discard port: nothing listens, so nothing leaves the host


def litellm_executable() -> Path:
    return LITELLM_VENV / "bin" / "litellm"


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip() or None


def ensure_litellm(log: Path) -> tuple[bool, str]:
    """Create bench/.venv-litellm and install the pinned LiteLLM proxy if missing.
    Returns (ok, message); never raises for an install failure."""
    if litellm_executable().exists() and litellm_version():
        return True, f"litellm {litellm_version()} (already installed)"
    try:
        if not (LITELLM_VENV / "bin" / "python").exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(LITELLM_VENV)],
                check=True,
                capture_output=True,
                timeout=300,
            )
        with open(log, "ab") as out:
            done = subprocess.run(
                [
                    str(LITELLM_VENV / "bin" / "pip"),
                    "install",
                    "--disable-pip-version-check",
                    "-q",
                    "-r",
                    str(PEER_REQUIREMENTS),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT_S,
            )
    except subprocess.TimeoutExpired:
        return False, f"installing LiteLLM took over {INSTALL_TIMEOUT_S} s (log: {log})"
    except (OSError, subprocess.CalledProcessError) as exc:
        return False, f"could not create {LITELLM_VENV}: {exc}"
    if done.returncode != 0 or not litellm_executable().exists():
        tail = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if line.startswith("ERROR")
        ][-3:]
        return False, "pip install failed: " + (" | ".join(tail) or f"see {log}")
    return True, f"litellm {litellm_version()} (installed now)"


LITELLM_CONFIG = """\
model_list:
  - model_name: qwen3-coder-plus
    litellm_params:
      model: openai/qwen3-coder-plus
      api_base: {api_base}
      api_key: bench-upstream-key
  - model_name: bench-burst
    litellm_params:
      model: openai/bench-burst
      api_base: {api_base}
      api_key: bench-upstream-key
general_settings:
  master_key: {master_key}
litellm_settings:
  drop_params: true
  set_verbose: false
  json_logs: false
"""


class LiteLLMProcess(Process):
    """`litellm --config ... --port P --num_workers 1` on loopback."""

    def __init__(self, workdir: Path, fake: FakeProcess) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = workdir / "litellm.yaml"
        config.write_text(LITELLM_CONFIG.format(api_base=f"{fake.url}/v1", master_key=LITELLM_KEY))
        local = "True"
        env = {
            "PATH": f"{LITELLM_VENV / 'bin'}:{os.environ.get('PATH', '')}",
            "HOME": str(workdir),
            "LITELLM_LOCAL_MODEL_COST_MAP": local,
            "LITELLM_LOCAL_BLOG_POSTS": local,
            "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": local,
            "LITELLM_LOCAL_AUTOROUTER_PRESETS": local,
            "LITELLM_LOCAL_POLICY_TEMPLATES": local,
            "LITELLM_MODEL_COST_MAP_URL": DEAD_END,
            "LITELLM_BLOG_POSTS_URL": DEAD_END,
            "LITELLM_ANTHROPIC_BETA_HEADERS_URL": DEAD_END,
            "LITELLM_AUTOROUTER_PRESETS_URL": DEAD_END,
            "HTTP_PROXY": DEAD_END,
            "HTTPS_PROXY": DEAD_END,
            "http_proxy": DEAD_END,
            "https_proxy": DEAD_END,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MODE": "PRODUCTION",
            "TELEMETRY": "False",
            "DISABLE_ADMIN_UI": "True",
            "HF_HUB_OFFLINE": "1",
            "TIKTOKEN_CACHE_DIR": str(workdir / "tiktoken"),
        }
        command = [
            str(litellm_executable()),
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--num_workers",
            "1",
        ]
        super().__init__("litellm", command, workdir, env, workdir / "litellm.log")
        self.url = f"http://{HOST}:{self.port}"
        self.wait_http(self.port, "/health/liveliness", 180)
