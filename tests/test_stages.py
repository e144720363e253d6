"""The stage-notebook check catches what it is meant to catch."""
import json, shutil, subprocess, sys, types
from pathlib import Path
from conftest import load_script

SCRIPT = Path(__file__).parents[1] / "scripts" / "check_stages.py"
check_stages = load_script("scripts/check_stages.py")

def run_check(folder: Path) -> types.SimpleNamespace:
    "scripts/check_stages.py on `folder`, in this process (what the script prints, and its exit code)."
    errors, ok = check_stages.check(folder)
    return types.SimpleNamespace(returncode=int(bool(errors)), stdout="".join(f"FAIL: {e}\n" for e in errors) or ok + "\n")

def make_project(root: Path, tmp: Path) -> Path:
    proj = tmp / "proj"; (proj / "nbs").mkdir(parents=True)
    shutil.copytree(root / "nbs" / "stages", proj / "nbs" / "stages")
    for f in ("dvc.yaml", "params.yaml", *(f"{d}/{n}" for d in ("paper", "world", "ablations") for n in ("dvc.yaml", "params.yaml", ".dvc/config"))):
        (proj / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy(root / f, proj / f)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=proj, check=True, env={**__import__("os").environ, "DVC_NO_ANALYTICS": "1"},
                   executable=str(Path(sys.executable).parent / "dvc"))
    for d in ("paper", "world", "ablations"):  # each its own DVC project, as in the repository (no git here)
        cfg = proj / d / ".dvc" / "config"; cfg.write_text(cfg.read_text().replace("[core]\n", "[core]\n    no_scm = true\n", 1))
    return proj

def test_repository_passes(root):
    "The script itself, as `make test` runs it: exit code 0 and its summary line."
    r = subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok: ") and "parameters consistent" in r.stdout, r.stdout + r.stderr

def test_script_exits_1_naming_each_problem(root, tmp_path):
    proj = make_project(root, tmp_path)
    nb_path = proj / "nbs" / "stages" / "prepare.ipynb"; nb = json.loads(nb_path.read_text())
    next(c for c in nb["cells"] if c["cell_type"] == "code")["execution_count"] = 3
    nb_path.write_text(json.dumps(nb))
    r = subprocess.run([sys.executable, str(SCRIPT), str(proj)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout.startswith("FAIL: ") and "has committed outputs or an execution count" in r.stdout, r.stdout + r.stderr

def test_detects_outputs_extra_param_and_two_parameter_cells(root, tmp_path):
    proj = make_project(root, tmp_path)
    assert run_check(proj).returncode == 0
    nb_path = proj / "nbs" / "stages" / "prepare.ipynb"; nb = json.loads(nb_path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    code[-1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    nb_path.write_text(json.dumps(nb))
    r = run_check(proj); assert r.returncode == 1 and "has committed outputs" in r.stdout
    code[-1]["outputs"] = []; code[-1]["metadata"]["tags"] = ["parameters"]; nb_path.write_text(json.dumps(nb))
    r = run_check(proj); assert r.returncode == 1 and "2 cells tagged 'parameters'" in r.stdout
    code[-1]["metadata"]["tags"] = []; nb_path.write_text(json.dumps(nb))
    dvc = proj / "dvc.yaml"; dvc.write_text(dvc.read_text().replace("-p reads prepare", "-p reads prepare -p sede 1"))
    r = run_check(proj); assert r.returncode == 1 and "passes ['sede']" in r.stdout, r.stdout

def test_detects_a_persistent_output_that_is_not_the_train_dir(root, tmp_path):
    "Only a stage's train_dir may survive a rerun (its checkpoint is checked against the stage's inputs)."
    proj = make_project(root, tmp_path)
    for f, key, other in (("dvc.yaml", "outputs/train/stage1/${key}:", "outputs/cache/stage1/${key}:"),
                          ("paper/dvc.yaml", "../paper/outputs/${item.backbone}/train/stage1/${item.objective}:", "../paper/outputs/${item.backbone}/cache/stage1/${item.objective}:")):
        path = proj / f; text = path.read_text(); assert text.count(key) == 1, (f, key)
        path.write_text(text.replace(key, other))
        r = run_check(proj); assert r.returncode == 1 and "persists" in r.stdout and "not its train_dir" in r.stdout, r.stdout
        path.write_text(text)
    assert run_check(proj).returncode == 0

def test_checks_the_stages_of_every_dvc_project(root, tmp_path):
    "world/, ablations/ and paper/ are DVC projects of their own: their stages are checked too, and must start from the root."
    proj = make_project(root, tmp_path)
    r = run_check(proj); assert r.returncode == 0 and "dvc.yaml, ablations/dvc.yaml, paper/dvc.yaml, world/dvc.yaml" in r.stdout, r.stdout
    path = proj / "world" / "dvc.yaml"; text = path.read_text()
    path.write_text(text.replace("-p reads prepare", "-p reads prepare -p sede 1"))
    r = run_check(proj); assert r.returncode == 1 and "stage world/dvc.yaml:prepare: passes" in r.stdout and "sede" in r.stdout, r.stdout
    assert text.count("cd .. && mkdir -p ${prepare.out}") == 1
    path.write_text(text.replace("cd .. && mkdir -p ${prepare.out}", "mkdir -p ${prepare.out}"))
    r = run_check(proj); assert r.returncode == 1 and "stage world/dvc.yaml:prepare: its command must start with `cd .. &&`" in r.stdout, r.stdout

def test_detects_a_stage_that_builds_stand_ins_without_their_configs(root, tmp_path):
    "A stage declaring dcr_nb/encoder.py must declare dcr_nb/model_configs: else an edited architecture would not rerun it."
    proj = make_project(root, tmp_path)
    path = proj / "world" / "dvc.yaml"; text = path.read_text()
    first = text.index("      - ../dcr_nb/model_configs\n")  # the first stage declaring it: pretrain_clip
    path.write_text(text[:first] + text[first:].replace("      - ../dcr_nb/model_configs\n", "", 1))
    r = run_check(proj)
    assert r.returncode == 1 and "stage world/dvc.yaml:pretrain_clip: declares dcr_nb/encoder.py but not dcr_nb/model_configs" in r.stdout, r.stdout

def test_detects_an_undeclared_read_and_a_parameter_left_at_its_default(root, tmp_path):
    """A setting a stage reads from the parameters file must be among its declared params (else DVC would not rerun it
    when the setting changes); and a notebook parameter the stage does not pass must default to "" (not given)."""
    proj = make_project(root, tmp_path)
    dvc = proj / "dvc.yaml"; text = dvc.read_text()
    old = "objectives.${item.objective} data<-prepare.out\"\n      -p seed ${item.seed}\n      -p out outputs/stage1"
    assert text.count(old) == 1, "the stage1 command changed: update this test"
    dvc.write_text(text.replace(old, old.replace("data<-prepare.out", "data<-prepare.out evaluate")))
    r = run_check(proj); assert r.returncode == 1 and "reads `evaluate` from params.yaml but does not declare it" in r.stdout, r.stdout
    dvc.write_text(text.replace(old, old.replace("\n      -p seed ${item.seed}", "")))
    r = run_check(proj); assert r.returncode == 1 and "does not pass `seed`, so train_dcr.ipynb would run with its default (0)" in r.stdout, r.stdout
    export = 'reads "export_hf model<-world.model objectives<-objectives seeds<-seeds data<-prepare.out"'
    assert text.count(export) == 1, "the export_hf command changed: update this test"
    dvc.write_text(text.replace(export, export.replace(" objectives<-objectives", "")))  # declared, never read: the default would run
    r = run_check(proj); assert r.returncode == 1 and "declares `objectives` of params.yaml among its params but its notebook reads nothing of it" in r.stdout, r.stdout
    dvc.write_text(text); assert run_check(proj).returncode == 0

def test_detects_a_parameters_cell_papermill_cannot_read(root, tmp_path):
    "papermill reads a parameters cell line by line; a line it cannot parse (an `=` inside the value) makes it warn that the stage passes an unknown parameter."
    proj = make_project(root, tmp_path)
    nb_path = proj / "nbs" / "stages" / "prepare.ipynb"; nb = json.loads(nb_path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    src = "".join(cell["source"]); assert 'reads = "prepare"' in src
    cell["source"] = src.replace('reads = "prepare"', 'reads = "prepare seed=prepare.seed"'); nb_path.write_text(json.dumps(nb))
    r = run_check(proj); assert r.returncode == 1 and "papermill cannot parse the parameters cell's line for reads" in r.stdout, r.stdout

def test_detects_a_module_the_notebook_runs_but_the_stage_does_not_declare(root, tmp_path):
    "A stage notebook's dcr_nb imports (and theirs, at top level) must be among the stage's deps, or an edit there would not rerun it."
    proj = make_project(root, tmp_path)
    dvc = proj / "dvc.yaml"; text = dvc.read_text()
    i = text.index("  export_hf:"); j = text.index("  compare:")
    assert "      - dcr_nb/dcr_stages.py\n" in text[i:j]
    dvc.write_text(text[:i] + text[i:j].replace("      - dcr_nb/dcr_stages.py\n", "") + text[j:])
    r = run_check(proj); assert r.returncode == 1 and "stage export_hf: its notebook runs dcr_nb/dcr_stages.py, which is not among its deps" in r.stdout, r.stdout
