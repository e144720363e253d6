"""The studies project (studies/dvc.yaml) is well formed: every stage runs its script with the settings it declares, and
the outputs that studies/dvc.lock records are committed and shown in nbs/08a_world.ipynb."""
import json, re, sys
from pathlib import Path
import pytest, yaml
from conftest import ROOT, load_script

sys.path.insert(0, str(ROOT / "scripts"))
from execute_nbs import closure  # the dcr_nb modules a text imports, transitively

STUDIES = ROOT / "studies"
STAGES = yaml.safe_load((STUDIES / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((STUDIES / "params.yaml").read_text())
LOCK = yaml.safe_load((STUDIES / "dvc.lock").read_text())["stages"] if (STUDIES / "dvc.lock").is_file() else {}

def declared(stage: dict, file: str) -> list[str]:
    "The keys of `file` (as dvc.yaml names it) that `stage` declares among its params."
    return [k for entry in stage["params"] if isinstance(entry, dict) for f, keys in entry.items() if f == file for k in keys]

def test_every_study_has_a_stage_and_its_settings():
    assert STAGES and sorted(STAGES) == sorted(PARAMS)
    assert sorted(STAGES) == sorted(p.stem.removeprefix("world_") for p in STUDIES.glob("world_*.py"))

@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_runs_its_script_with_the_code_it_imports(name):
    st, script = STAGES[name], f"studies/world_{name}.py"
    assert st["cmd"] == f"cd .. && python {script}", st["cmd"]  # every setting comes from params.yaml, none from the command line
    assert (ROOT / script).is_file()
    deps = {d.removeprefix("../") for d in st["deps"]}
    missing = {str(p.relative_to(ROOT)) for p in closure((ROOT / script).read_text())} - deps
    assert script in deps and not missing, f"{name}: not among its deps: {sorted(missing)}"
    assert "dcr_nb/model_configs" in deps  # encoder.py builds the stand-ins from them
    assert all((ROOT / d).exists() or d.startswith(("world/outputs/", "data")) for d in deps), deps  # made by `dvc --cd world repro prepare`, `make data`

@pytest.mark.parametrize("name", sorted(STAGES))
def test_script_reads_exactly_its_declared_settings(name):
    "Its command line's defaults are its section of studies/params.yaml, key for key; the world settings it reads are declared."
    st, m = STAGES[name], load_script(f"studies/world_{name}.py")
    assert m.SECTION == name and declared(st, "params.yaml") == [name]
    assert vars(m.parser().parse_args([])) == PARAMS[name]
    assert st["outs"] == [{f"../${{{name}.out}}": {"cache": False}}]  # the whole folder, tracked by git
    src = (ROOT / f"studies/world_{name}.py").read_text()
    reads = set(re.findall(r'params\["(\w+)"\](?:\["(\w+)"\])?', src))
    reads = {f"{s}.{k}" if k else s for s, k in reads}
    world = declared(st, "../world/params.yaml")
    assert all(any(r == k or r.startswith(k + ".") for k in world) for r in reads), (reads, world)
    assert all(any(r == k or r.startswith(k + ".") or k.startswith(r + ".") for r in reads) for k in world), (reads, world)

@pytest.mark.parametrize("name", sorted(LOCK))
def test_committed_outputs_are_what_the_lock_records(name):
    "A stage that studies/dvc.lock records has its folder here, as recorded (files and bytes), and 08a_world shows its table."
    (out,) = LOCK[name]["outs"]
    folder = (STUDIES / out["path"]).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert (folder / "table.md").is_file() and (folder / "results.json").is_file(), folder
    assert (len(files), sum(p.stat().st_size for p in files)) == (out["nfiles"], out["size"]), f"{folder} differs from studies/dvc.lock"
    shown = "".join("".join(o.get("data", {}).get("text/markdown", "")) for c in json.loads((ROOT / "nbs/08a_world.ipynb").read_text())["cells"]
                    for o in c.get("outputs", []))
    ok = (folder / "table.md").read_text().strip() in shown
    assert ok, f"nbs/08a_world.ipynb does not show {name}'s committed table: re-execute it (scripts/execute_nbs.py nbs/08a_world.ipynb)"
