"""A rerun through DVC resumes a training stage only when nothing it depends on has changed.

The path a researcher takes: run a stage, stop it or let it finish, edit code or data, `dvc repro`
again. These tests do that with the real `stage1@dcr-0` stage (papermill, DVC, the shipped world, the smoke
profile at 60 steps) in one scratch copy of the working tree, and look at what the rerun did: the step it
started from (`run.json`), what it set aside, and the weights it exported (`projector.pt`).
"""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import psutil, pytest, torch, yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
STAGE, STEPS, EVERY = "stage1@dcr-0", 60, 10
SECTION, TRAIN, OUT, WEIGHTS, NB = "stage1", "outputs/train/stage1/dcr-0", "outputs/stage1/dcr-0", "projector.pt", "train_dcr.ipynb"

def env(work: Path) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DCR_NB_ROOT": str(work),
            "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "DVC_NO_ANALYTICS": "1"}

def repro(work: Path, *args, target=STAGE) -> str:
    "`dvc repro STAGE` (or `target`) in the scratch copy; returns its output (and shows it on failure)."
    r = subprocess.run(["dvc", "repro", "--no-run-cache", *args, target], cwd=work, env=env(work),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr

def killed_mid_run(work: Path) -> int:
    "Run the stage from scratch and SIGKILL it (DVC, papermill and the kernel) once it has a checkpoint; returns its step."
    repro(work, "--single-item", target="prepare")  # the input data the params ask for (an earlier test may have changed them)
    shutil.rmtree(work / TRAIN, ignore_errors=True)
    ckpt = work / TRAIN / "checkpoint.pt"
    p = subprocess.Popen(["dvc", "repro", "--no-run-cache", "-f", "-s", STAGE], cwd=work, env=env(work),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while not ckpt.exists():
        assert p.poll() is None, f"the stage ended (rc {p.returncode}) before its first checkpoint"
        assert time.time() - t0 < 300, "no checkpoint after 300 s"
        time.sleep(0.05)
    procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]  # the kernel has its own session
    for q in procs:
        try: q.kill()
        except psutil.NoSuchProcess: pass
    p.wait()
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["step"]
    assert 0 < step < STEPS, f"killed at step {step}: the run should stop between its first checkpoint and its end"
    return step

def run_record(work: Path) -> dict: return json.loads((work / TRAIN / "run.json").read_text())
def weights(work: Path) -> dict: return torch.load(work / OUT / WEIGHTS, map_location="cpu", weights_only=True)
def executed(work: Path) -> str: return (work / OUT / NB).read_text()
def same(a: dict, b: dict) -> bool: return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "A scratch copy on the smoke profile (stage1@dcr-0 at 60 steps), and the weights of one uninterrupted run."
    work = tmp_path_factory.mktemp("rerun") / "proj"
    subprocess.run(["bash", str(ROOT / "scripts/scratch_project.sh"), str(work)], check=True, env=env(work))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params[SECTION].update(steps=STEPS, ckpt_every=EVERY)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", f"{STAGE} at {STEPS} steps"], cwd=work, check=True)
    repro(work)
    assert run_record(work)["start_step"] == 0
    return work, weights(work)

@pytest.fixture
def clean(project):
    "The project with every edit of an earlier test undone (DVC reruns what they changed); dvc.lock keeps what last ran."
    work, ref = project
    subprocess.run(["git", "checkout", "-q", "--", ".", ":!dvc.lock"], cwd=work, check=True)
    return work, ref

def test_finished_then_data_changed_trains_anew(clean):
    "A finished run, then other input data (other scenes, via the seed of `prepare`): new weights."
    work, ref = clean
    repro(work)  # the reference run's inputs: a no-op when no earlier test changed them (this test runs first)
    assert same(weights(work), ref)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["prepare"]["seed"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro(work)
    rec = run_record(work)
    assert rec["start_step"] == 0, rec
    assert "outputs/prepare/scenes.npz" in rec["set_aside"] and f"step {STEPS}" in rec["set_aside"], rec["set_aside"]
    assert not same(weights(work), ref), "new data must give new weights, not the finished run's"

def test_finished_then_world_rebuilt_trains_anew(clean):
    "A finished run, then a rebuilt world (other denoiser weights, where `make world` ships them): trained anew, new weights."
    from safetensors.torch import load_file, save_file
    work, ref = clean
    repro(work); assert same(weights(work), ref)
    unet = "world/weights/unet/diffusion_pytorch_model.safetensors"
    save_file({k: v * 1.01 for k, v in load_file(work / unet).items()}, work / unet, metadata={"format": "pt"})
    repro(work)
    rec = run_record(work)
    assert rec["start_step"] == 0, rec
    assert unet in rec["set_aside"] and f"step {STEPS}" in rec["set_aside"], rec["set_aside"]
    assert not same(weights(work), ref), "another denoiser must give new weights, not the finished run's"

def test_killed_then_unchanged_resumes_bit_identical(clean):
    work, ref = clean
    step = killed_mid_run(work)
    repro(work)
    rec = run_record(work)
    assert rec["start_step"] == step and rec["set_aside"] is None, rec
    assert f"resuming {work}/{TRAIN} at step {step} of {STEPS}" in executed(work)
    assert same(weights(work), ref), "a resumed run must end with the uninterrupted run's weights"

def test_killed_then_code_changed_starts_over(clean):
    work, ref = clean
    step = killed_mid_run(work)
    losses = work / "dcr_nb/losses.py"
    losses.write_text(losses.read_text() + "\n# an edit: one more line in a code dependency of the stage\n")
    repro(work)
    rec = run_record(work)
    assert rec["start_step"] == 0, rec
    assert "dcr_nb/losses.py" in rec["set_aside"] and f"step {step}" in rec["set_aside"], rec["set_aside"]
    aside = work / TRAIN / "other_inputs"
    assert (aside / "checkpoint.pt").exists() and "dcr_nb/losses.py" in (aside / "why.txt").read_text()
    assert f"set aside {work}/{TRAIN}: its checkpoint (step {step})" in executed(work)
