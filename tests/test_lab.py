"""JupyterLab starts on 127.0.0.1 with a token (as root too) and serves /lab; stopped by its pid."""
import os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path
import pytest

def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def test_jupyterlab_serves_lab(root, tmp_path):
    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists(), f"jupyter not installed next to {sys.executable}"
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")}
    proc = subprocess.Popen([str(jupyter), "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root / 'nbs'}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        body, deadline = None, time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=5) as r:
                    status, body = r.status, r.read().decode(); break
            except (urllib.error.URLError, ConnectionError): time.sleep(0.5)
        assert proc.poll() is None, f"jupyter lab exited: {proc.stderr.read().decode()[-2000:]}"
        assert body is not None, "jupyter lab did not answer within 90 s"
        assert status == 200 and "JupyterLab" in body
        with pytest.raises(urllib.error.HTTPError) as e:  # the token is required
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=5)
        assert e.value.code == 403
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    assert proc.returncode is not None
