"""Start `python -m qwenproxy serve` on a free loopback port and wait for /health.

Run with the interpreter of a venv that has only requirements.txt installed.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
workdir = tempfile.mkdtemp()
env = {"PATH": os.environ.get("PATH", ""), "HOME": workdir, "PYTHONPATH": root,
       "PORT": str(port)}
proc = subprocess.Popen([sys.executable, "-m", "qwenproxy", "serve"], cwd=workdir, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
deadline = time.monotonic() + 30
try:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve exited early:\n{proc.stdout.read().decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                body = json.load(r)
                assert r.status == 200 and body == {"status": "ok"}, body
                print(f"smoke: runtime-only venv serves /health on port {port}")
                break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit("serve did not answer /health within 30 s")
finally:
    proc.terminate()
    proc.wait(10)
