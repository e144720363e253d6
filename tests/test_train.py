"""A run killed with SIGKILL and started again ends with the same weights as an uninterrupted run."""
import os, signal, subprocess, sys, time
from pathlib import Path
import torch

SCRIPT = Path(__file__).with_name("toy_train.py")

def run(out, result, sleep=0.0, **kw):
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), str(result), str(sleep)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)

def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    ref = run(tmp_path / "ref", tmp_path / "ref.pt"); assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    p = run(tmp_path / "run", tmp_path / "run.pt", sleep=0.05)
    ckpt, deadline = tmp_path / "run" / "checkpoint.pt", time.time() + 120
    while time.time() < deadline and not ckpt.exists(): time.sleep(0.02)
    assert ckpt.exists(), "no checkpoint appeared"
    time.sleep(0.3)  # kill between two checkpoints, mid-step
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL and not (tmp_path / "run.pt").exists()
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < step < 40
    again = run(tmp_path / "run", tmp_path / "run.pt"); assert again.wait(timeout=300) == 0, again.stderr.read().decode()
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "run.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [f for f in (tmp_path / "run").iterdir() if f.name.endswith(".tmp")]  # no partial files left
