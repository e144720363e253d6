"""The launcher (`python -m dcr_nb.launch`, nbs/09c_launch.ipynb) and the stop that resumes (nbs/05_train.ipynb, nbs/00b_stage.ipynb):
(a) the accelerate command from a params file and from SLURM's variables, and the errors; (b) two machines on localhost (gloo, CPU),
machine 0 under the launcher and machine 1 following its announcement; (c) SIGTERM to one rank's stage runner mid-run, then a rerun:
the weights of an uninterrupted run, bit for bit; (d) launch settings stay out of a run's fingerprint, its world size does not."""
import json, os, shutil, signal, socket, subprocess, sys, time
from pathlib import Path
import pytest
import torch
import yaml
from dcr_nb.launch import Launch, LaunchError, resolve, first_host, accelerate_command, parse_args, plan, main, announce, DONE
from dcr_nb.stage import STOP_EXIT
from dcr_nb.train import TrainConfig, run_inputs, fingerprint, changed_inputs

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).with_name("launch_toy.py")
sys.path.insert(0, str(TOY.parent))
import launch_toy

def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def clean_env(**extra) -> dict:
    "This environment without SLURM's, DVC's or the launcher's variables (a CI job may run under SLURM), set up for CPU runs."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DVC_", "DCR_NB_STOP", "DCR_NB_LAUNCH"))}
    return {**env, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "DCR_NB_ROOT": str(ROOT), "DCR_NB_PROGRESS": "off",
            "DCR_NB_NUMERICS": "native",  # a stage notebook's kernel computes as a plain script does: runs of both kinds compare bit for bit
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **extra}  # no scontrol: the node list is read by the launcher

def write_params(path: Path, **launch) -> Path:
    path.write_text(yaml.safe_dump({"launch": launch})); return path

def launcher(params, *args, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dcr_nb.launch", str(params), "--", *map(str, args)], env=env or clean_env(),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

def finish(p: subprocess.Popen, timeout=240) -> tuple[int, str]:
    out, err = p.communicate(timeout=timeout); return p.returncode, out + err

SLURM = {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[007-010]", "SLURM_GPUS_ON_NODE": "8",
         "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "4"}
EMPTY = {"num_processes": "", "num_machines": "", "machine_rank": "", "main_process_ip": "", "main_process_port": 29500}

# (a) the command
def test_command_from_params():
    l, src = resolve({"num_processes": 4, "num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.1", "main_process_port": 29501}, {})
    assert accelerate_command(l, ["-m", "dcr_nb.stage", "a.ipynb", "b.ipynb"], python="py") == [
        "py", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "8", "--num_machines", "2", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--main_process_port", "29501",
        "-m", "dcr_nb.stage", "a.ipynb", "b.ipynb"]
    assert set(src.values()) == {f"launch.{k}" for k in ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port")}
    one = accelerate_command(resolve({"num_processes": 1}, {})[0], ["t.py"])
    assert "--multi_gpu" not in one and "--machine_rank" not in one and one[one.index("--num_processes") + 1] == "1"
    two = accelerate_command(resolve({"num_processes": 2}, {})[0], ["t.py"])
    assert "--multi_gpu" in two and "--machine_rank" not in two   # 2 processes on one machine: torchrun, no rendezvous address

def test_command_from_slurm(tmp_path):
    l, src = resolve(EMPTY, SLURM, scontrol=False)
    assert (l, src["machine_rank"], src["main_process_ip"]) == (Launch(8, 4, 2, "gpu007", 29500), "SLURM_NODEID", "SLURM_JOB_NODELIST")
    assert resolve({**EMPTY, "num_processes": 4, "machine_rank": 0}, SLURM, scontrol=False)[0] == Launch(4, 4, 0, "gpu007")  # the file wins
    assert resolve(EMPTY, {**SLURM, "SLURM_NODEID": ""} | {"SLURM_PROCID": "3"}, scontrol=False)[0].machine_rank == 3
    fake = tmp_path / "scontrol"   # scontrol expands the node list when it is there
    fake.write_text("#!/bin/sh\necho \"$3\" > " + str(tmp_path / "asked") + "\nprintf 'node-a\\nnode-b\\n'\n"); fake.chmod(0o755)
    assert resolve(EMPTY, SLURM, scontrol=str(fake))[0].main_process_ip == "node-a" and (tmp_path / "asked").read_text().strip() == "gpu[007-010]"
    for nodelist, host in [("a,b", "a"), ("gpu[3],login1", "gpu3"), ("r[2-3]-n[08-09]", "r2-n08"), ("n[12,5-6]x", "n12x")]:
        assert first_host(nodelist, scontrol=False) == host

@pytest.mark.parametrize("section,env,given,msg", [
    ({**EMPTY, "num_machines": 2}, SLURM, None, "machine_rank 2 is not one of the 2 machine(s) (0 .. 1) (from: "),
    ({"num_processes": 8, "num_machines": 2}, {}, None, "2 machines need main_process_ip"),
    (EMPTY, {}, None, "num_processes is empty and SLURM_GPUS_ON_NODE is not set"),
    ({"num_processes": 8, "port": 29500}, {}, None, "'port' is called main_process_port here"),
    ({"num_processes": 8, "num_machine": 2}, {}, None, "no setting 'num_machine' (did you mean 'num_machines'?)"),
    ({"num_processes": 8}, {}, {"machine_rank": "one"}, "command line: machine_rank must be an integer, got 'one'"),
    ({"num_processes": 8, "main_process_port": 0}, {}, None, "is not a port"),
    ({"num_processes": 8, "mixed_precision": False}, {}, None, "quote the value"),
    (EMPTY, {**SLURM, "SLURM_STEP_NUM_TASKS": "32"}, None, "run one launcher per node (srun --ntasks-per-node=1)"),
    (EMPTY, {**SLURM, "SLURM_JOB_NODELIST": "gpu[007-"}, None, "cannot read the first host of the SLURM node list")])
def test_inconsistent_settings_are_errors(section, env, given, msg):
    with pytest.raises(LaunchError, match=None) as e: resolve(section, env, given, scontrol=False)
    assert msg in str(e.value), str(e.value)

def test_command_line(tmp_path, capsys, monkeypatch):
    for k in [k for k in os.environ if k.startswith("SLURM_")]: monkeypatch.delenv(k)
    p = write_params(tmp_path / "p.yaml", num_processes=2, main_process_port=29502, data_workers=2)   # data_workers: a stage's setting
    assert parse_args([str(p), "--machine_rank", "0", "--dry-run", "--", "-m", "x", "--y"]) == (str(p), {"machine_rank": "0"}, "launch", True, ["-m", "x", "--y"])
    assert main([str(p), "--mixed_precision", "bf16", "--dry-run", "--", "t.py", "a"]) == 0
    out = capsys.readouterr().out
    assert "data_workers: not the launcher's: left to the stages" in out
    assert "world size 2" in out and out.rstrip().endswith("--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision bf16 --dynamo_backend no --main_process_port 29502 t.py a"), out
    for argv, msg in [([str(p), "t.py"], "no -- before the command"), ([str(p), "--"], "nothing to launch"),
                      ([str(tmp_path / "none.yaml"), "--", "t.py"], "no parameters file"), ([str(p), "--section", "train", "--", "t.py"], "has no `train:` section"),
                      (["--follow"], "--follow takes a folder")]:
        assert main(argv) == 2 and msg in capsys.readouterr().err, argv

# (b) two machines on localhost, (d) the same run as one machine of two processes
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    "An uninterrupted run of the toy on one machine with two processes: its folder (checkpoint, run.json) and final weights (ref.pt)."
    d = tmp_path_factory.mktemp("reference")
    p = write_params(d / "params.yaml", num_processes=2, main_process_port=free_port())
    rc, log = finish(launcher(p, TOY, d / "run", d / "ref.pt"))
    assert rc == 0, log[-3000:]
    return d

def test_two_machines_on_localhost(tmp_path, reference):
    "Machine 0 under the launcher, machine 1 following its announcement (SLURM's variables on 127.0.0.1): world size 2, the reference's weights and fingerprint."
    p = write_params(tmp_path / "params.yaml", **{**EMPTY, "num_processes": 1, "main_process_port": free_port()})
    folder, out = tmp_path / "job", tmp_path / "run"
    slurm = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "2"}
    t0 = time.perf_counter()
    lead = launcher(p, TOY, out, tmp_path / "two.pt", env=clean_env(**slurm, SLURM_NODEID="0", DCR_NB_LAUNCH_DIR=str(folder)))
    follower = subprocess.Popen([sys.executable, "-m", "dcr_nb.launch", "--follow", str(folder)], env=clean_env(**slurm, SLURM_NODEID="1"),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, log = finish(lead)
    (folder / DONE).write_text(f"{rc}\n")   # what machine 0's batch script writes when its DVC ends
    rc1, log1 = finish(follower, timeout=60)
    print(f"two machines on localhost: {time.perf_counter() - t0:.1f} s")
    assert (rc, rc1) == (0, 0), log[-3000:] + log1[-3000:]
    assert "machine 0 (SLURM_NODEID) of 2 (SLURM_NNODES)" in log and "machine 0 at 127.0.0.1:" in log, log[-2000:]
    assert "launch 1 of machine 0, as machine 1 of 2" in log1, log1[-2000:]
    ranks = sorted((json.loads(f.read_text()) for f in out.glob("rank*.json")), key=lambda r: r["rank"])
    assert [(r["rank"], r["world"], r["machine"]) for r in ranks] == [(0, 2, 0), (1, 2, 1)], ranks
    a, b = torch.load(tmp_path / "two.pt"), torch.load(reference / "ref.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)      # 2 machines x 1 = 1 machine x 2: the same math
    run, ref = (json.loads((d / "run.json").read_text()) for d in (out, reference / "run"))
    # Other split, other port: the same inputs, so the same fingerprint (but for a module of the package edited meanwhile).
    assert run["inputs"]["world_size"] == 2 and not [c for c in changed_inputs(ref["inputs"], run["inputs"]) if not c.startswith("dcr_nb/")]
    assert run["fingerprint"] == ref["fingerprint"] or changed_inputs(ref["inputs"], run["inputs"])

def test_world_size_is_an_input(tmp_path, reference, monkeypatch):
    "The reference's finished folder, trained again by one process: another run (set aside), not a resumption."
    monkeypatch.setenv("DCR_NB_PROGRESS", "off")
    shutil.copytree(reference / "run", tmp_path / "run")
    r = launch_toy.run(tmp_path / "run", tmp_path / "one.pt")
    assert r["start_step"] == 0 and "world_size" in r["set_aside"], r

def test_launch_settings_stay_out_of_the_fingerprint(fake_checkout, monkeypatch):
    "Under DVC, a stage that declares `launch` among its params: its port and machine split leave the fingerprint alone; the world size and the math do not."
    d = fake_checkout
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=d, check=True)
    (d / "train.py").write_text("# the stage's code\n")
    (d / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {"cmd": "python train.py", "deps": ["train.py"], "params": ["launch", "train"]}}}))
    def params(port, machines, procs, lr):
        (d / "params.yaml").write_text(yaml.safe_dump({"launch": {"num_processes": procs, "num_machines": machines, "main_process_port": port},
                                                       "train": {"lr": lr}}))
    monkeypatch.setenv("DCR_NB_ROOT", str(d)); monkeypatch.setenv("DVC_ROOT", str(d)); monkeypatch.setenv("DVC_STAGE", "train")
    cfg = TrainConfig()
    def fp(world=8): return fingerprint(run_inputs(cfg, world_size=world))
    params(29500, 1, 8, 0.1); base = fp()
    assert run_inputs(cfg, world_size=8)["params"] == {"params.yaml": {"train": {"lr": 0.1}}}   # read through DVC, without `launch`
    params(29600, 2, 4, 0.1); assert fp() == base              # another port, 2 machines x 4 instead of 1 x 8
    assert fp(world=4) != base                                 # another world size: another global batch
    params(29600, 2, 4, 0.2); assert fp() != base              # the stage's own parameters still count

# (c) a stop mid-run, then a rerun
STOPPABLE_STAGE = """import sys
sys.path.insert(0, tests)
from launch_toy import run
print(run(out, result, sleep))"""

def test_sigterm_mid_run_then_resume_matches_uninterrupted(tmp_path, reference):
    """Two processes, each running a stage notebook; SIGTERM to rank 1's stage runner: both stop after the same update with a
    checkpoint and the launcher exits with 75; a rerun resumes there and ends bit for bit as the reference."""
    import nbformat, psutil
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("out = ''\nresult = ''\nsleep = 0.0\ntests = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(STOPPABLE_STAGE)]
    nbformat.write(nb, tmp_path / "stage.ipynb")
    p = write_params(tmp_path / "params.yaml", num_processes=2, main_process_port=free_port())
    out, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoint.pt"
    t0 = time.perf_counter()
    run = launcher(p, "-m", "dcr_nb.stage", tmp_path / "stage.ipynb", tmp_path / "stage_out.ipynb", "-p", "out", out,
                   "-p", "result", tmp_path / "run.pt", "-p", "sleep", 0.2, "-p", "tests", TOY.parent)  # 0.2 s a step: time to stop it
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.exists() and run.poll() is None: time.sleep(0.05)
    assert ckpt.exists(), finish(run)[1][-3000:]
    runners = [c for c in psutil.Process(run.pid).children(recursive=True) if "dcr_nb.stage" in c.cmdline() and c.environ().get("RANK") == "1"]
    assert len(runners) == 1, [c.cmdline() for c in psutil.Process(run.pid).children(recursive=True)]
    runners[0].send_signal(signal.SIGTERM)
    rc, log = finish(run)
    step = torch.load(ckpt, weights_only=False)["step"]
    print(f"stopped at step {step} of {launch_toy.STEPS}: {time.perf_counter() - t0:.1f} s")
    assert rc == STOP_EXIT and 0 < step < launch_toy.STEPS, log[-3000:]
    assert log.count(f"stopped at step {step} of {launch_toy.STEPS}") == 2, log[-3000:]    # both ranks, after the same update
    assert "run the same command again to resume" in log and not (tmp_path / "run.pt").exists()
    rc, log = finish(launcher(p, TOY, out, tmp_path / "run.pt"))   # the rerun as a plain script: the same training, no kernels to start
    assert rc == 0, log[-3000:]
    assert json.loads((out / "run.json").read_text())["start_step"] == step
    a, b = torch.load(tmp_path / "run.pt"), torch.load(reference / "ref.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(f"stop and resume: {time.perf_counter() - t0:.1f} s")

# paper/slurm/: what each node runs
def test_slurm_node_script(tmp_path):
    "node.sh: node 0 runs DVC and writes `done` with its status; another node follows until `done` (fake dvc, no SLURM)."
    fake_bin = tmp_path / "bin"; fake_bin.mkdir()
    (fake_bin / "dvc").write_text("#!/bin/sh\necho \"dvc $*\"\nexit 3\n"); (fake_bin / "dvc").chmod(0o755)
    folder = tmp_path / "job"; folder.mkdir()
    env = clean_env(DCR_NB_LAUNCH_DIR=str(folder), PATH=f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin")
    script = ROOT / "paper/slurm/node.sh"
    r = subprocess.run(["bash", str(script)], env={**env, "SLURM_NODEID": "0"}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip(), (folder / DONE).read_text().strip()) == (3, "dvc --cd paper repro", "3"), r.stderr
    r = subprocess.run(["bash", str(script)], env={**env, "SLURM_NODEID": "1"}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr                       # nothing announced, `done` written: nothing to follow
    for f in ("paper.sbatch", "node.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / "paper/slurm" / f)]).returncode == 0
    sbatch = (ROOT / "paper/slurm/paper.sbatch").read_text()
    assert all(s in sbatch for s in ("--requeue", "--signal=B:USR1@", "--ntasks-per-node=1", "DCR_NB_LAUNCH_DIR=", "DCR_NB_STOP_FILE=", "scontrol requeue"))
