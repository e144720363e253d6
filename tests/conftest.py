import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def root() -> Path:
    "The repository root."
    return ROOT

@pytest.fixture
def fake_checkout(tmp_path) -> Path:
    "An empty folder that looks like a dcr-nb checkout (a settings.ini naming the library)."
    (tmp_path / "settings.ini").write_text("[DEFAULT]\nlib_name = dcr_nb\n")
    return tmp_path

def load_script(path: str):
    "The script at `path` (from the repository root, e.g. benchmarks/dcr_step.py) as a module, without running its __main__ block."
    import importlib.util
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m

def run_py(code: str, cwd, env_extra=None, drop_root_env=True):
    "Run `python -c code` in a subprocess; returns the CompletedProcess."
    import subprocess
    env = {**os.environ, **(env_extra or {})}
    if drop_root_env and "DCR_NB_ROOT" not in (env_extra or {}): env.pop("DCR_NB_ROOT", None)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
