"""A run killed with SIGKILL, or stopped with SIGTERM, and started again ends with the same weights as an uninterrupted run."""
import os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from dcr_nb.stage import STOP_ENV, STOP_EXIT

SCRIPT = Path(__file__).with_name("toy_train.py")

def run(out, result, sleep=0.0, **kw):
    env = {k: v for k, v in os.environ.items() if k != STOP_ENV}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), str(result), str(sleep)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, **kw)

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    "The final weights of an uninterrupted run."
    d = tmp_path_factory.mktemp("reference")
    ref = run(d / "ref", d / "ref.pt"); assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    return d / "ref.pt"

def interrupt(tmp_path, sig) -> subprocess.Popen:
    "Start the toy run, wait for its first checkpoint, send `sig` between two checkpoints (mid-step), wait for it to end."
    p = run(tmp_path / "run", tmp_path / "run.pt", sleep=0.05)
    ckpt, deadline = tmp_path / "run" / "checkpoint.pt", time.time() + 120
    while time.time() < deadline and not ckpt.exists(): time.sleep(0.02)
    assert ckpt.exists(), "no checkpoint appeared"
    time.sleep(0.3)
    p.send_signal(sig); p.wait()
    return p

def assert_resumes_to(tmp_path, reference):
    again = run(tmp_path / "run", tmp_path / "run.pt"); assert again.wait(timeout=300) == 0, again.stderr.read().decode()
    a, b = torch.load(reference), torch.load(tmp_path / "run.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [f for f in (tmp_path / "run").iterdir() if f.name.endswith(".tmp")]  # no partial files left

def test_sigkill_then_resume_matches_uninterrupted(tmp_path, reference):
    p = interrupt(tmp_path, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL and not (tmp_path / "run.pt").exists()
    assert 0 < torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] < 40
    assert_resumes_to(tmp_path, reference)

def test_sigterm_stops_after_the_update_then_resume_matches_uninterrupted(tmp_path, reference):
    "SIGTERM to a plain training script: it ends the current update, checkpoints it and exits with STOP_EXIT (75)."
    p = interrupt(tmp_path, signal.SIGTERM)
    err = p.stderr.read().decode()
    step = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"]
    assert p.returncode == STOP_EXIT and not (tmp_path / "run.pt").exists(), err[-2000:]
    assert 0 < step < 40 and f"stopped at step {step} of 40 (SIGTERM received)" in err, err[-2000:]
    assert_resumes_to(tmp_path, reference)
