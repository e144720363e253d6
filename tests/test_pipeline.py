"""Stage notebooks refuse bad parameters before any compute, with a clear message."""
import subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def run_stage(nb: str, tmp_path, *params):
    args = [str(Path(sys.executable).parent / "papermill"), "--log-level", "ERROR", str(ROOT / "nbs" / "stages" / nb), str(tmp_path / nb)]
    for k, v in params: args += ["-p", k, str(v)]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)

READS = "world dcr stage1 objectives.dcr data<-prepare.out"

def params_with(tmp_path, edit) -> str:
    "A copy of params.yaml with `edit` (a function of its dict) applied: what a researcher edits. Returns its path."
    import yaml
    p = yaml.safe_load((ROOT / "params.yaml").read_text()); edit(p)
    f = tmp_path / "params.yaml"; f.write_text(yaml.safe_dump(p, sort_keys=False)); return str(f)

def _set(section, key, value): return lambda p: p[section].__setitem__(key, value)

BAD_PARAMS = [  # (what the researcher wrote, extra notebook parameters, the message)
    (lambda p: None, (("reads", READS.replace("objectives.dcr", "objectives.simclr")),), "no `objectives.simclr` (keys there: recon, naive, dcr)"),
    (_set("stage1", "batch_size", 1), (), "dcr needs batch_size >= 2"),
    (_set("stage1", "lora_r", 16), (), "LoRA (lora_r=16) belongs to stage 2"),
    (_set("stage1", "learning_rate", 0.1), (), "`stage1.learning_rate` names no parameter 'learning_rate'"),
    (lambda p: None, (("stage", 2), ("reads", READS.replace("stage1", "stage2")), ("projector", "outputs/nowhere/projector.pt")), "produced by the `stage1@dcr-0` stage"),
    (_set("world", "clip", "outputs/nowhere/clip.pt"), (), "shipped in git with the world: restore it with `git checkout -- world/weights`"),
    (_set("stage1", "lr", "fast"), (), "DCRStageConfig.lr must be float, got str 'fast'"),
]

def exec_stage(nb: str, *params):
    "The stage notebook's code cells in this process, as papermill runs them (its parameters injected after the parameters cell)."
    import nbformat
    cells = [c for c in nbformat.read(ROOT / "nbs" / "stages" / nb, as_version=4).cells if c.cell_type == "code"]
    assert "parameters" in cells[0].metadata.get("tags", [])
    ns = {"__name__": "__main__"}
    exec(cells[0].source, ns); ns.update(params)
    for c in cells[1:]: exec(c.source, ns)

def test_train_dcr_rejects_bad_parameters_through_papermill(tmp_path):
    "One bad value in the parameters file through the real path (papermill, a kernel): a non-zero exit with the message, nothing trained."
    edit, extra, msg = BAD_PARAMS[1]
    r = run_stage("train_dcr.ipynb", tmp_path, ("params", params_with(tmp_path, edit)), ("reads", READS),
                  ("out", str(tmp_path / "o")), ("train_dir", str(tmp_path / "t")), *extra)
    assert r.returncode != 0 and msg in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    assert not (tmp_path / "t" / "checkpoint.pt").exists()  # nothing was trained

@pytest.mark.parametrize("edit, extra, msg", BAD_PARAMS)
def test_train_dcr_rejects_bad_parameters(tmp_path, monkeypatch, edit, extra, msg):
    "Each bad value, the notebook's cells run in-process (a kernel per case would cost ~10 s): the message, nothing trained."
    monkeypatch.chdir(ROOT)
    with pytest.raises(Exception) as e:
        exec_stage("train_dcr.ipynb", ("params", params_with(tmp_path, edit)), ("reads", READS),
                   ("out", str(tmp_path / "o")), ("train_dir", str(tmp_path / "t")), *extra)
    assert msg in str(e.value), f"{type(e.value).__name__}: {e.value}"
    assert not (tmp_path / "t" / "checkpoint.pt").exists()  # nothing was trained

@pytest.mark.parametrize("pipeline,objectives", [("dvc.yaml", ("recon", "naive", "dcr")), ("paper/dvc.yaml", ("dcr",))])
def test_an_objective_parameter_touches_only_that_objective(pipeline, objectives):
    "Changing `objectives.<key>` in a pipeline's params reruns only that objective's stages, every seed (and what reads their outputs)."
    import yaml
    from dvc.repo import Repo
    from dcr_nb.core import dvc_projects
    params = yaml.safe_load((ROOT / pipeline).with_name("params.yaml").read_text())
    assert tuple(params["objectives"]) == objectives
    runs = [f"-{s}" for s in params["seeds"]] if "seeds" in params else [""]  # the default pipeline: one run per seed
    prefixes = [f"{b}-" for b in params["backbones"]] if "backbones" in params else [""]  # the paper profile: one run per backbone
    deps = {}
    for st in (s for s in Repo(str(dvc_projects(ROOT)[pipeline])).index.stages if hasattr(s, "name")):  # not data.dvc
        keys = set()
        for d in st.deps:
            if type(d).__name__ == "ParamsDependency": keys |= set(d.params or []) or {"<whole file>"}
        deps[st.name] = keys
    for key in objectives:
        users = {s for s, ks in deps.items() if any(k == f"objectives.{key}" or k.startswith(f"objectives.{key}.") for k in ks)}
        assert users == {f"stage{n}@{p}{key}{r}" for n in (1, 2) for p in prefixes for r in runs}, users
    # only the stages that read every run (the comparison, the Hugging Face export) may depend on the whole section
    assert not any("objectives" in ks or "<whole file>" in ks for s, ks in deps.items() if not s.endswith(("compare", "export_hf"))), deps

def test_ablations_differ_from_the_default_dcr_in_one_thing_and_write_apart():
    "ablations/dvc.yaml trains with the default's dcr settings (objectives.dcr) only, and writes nowhere the default pipeline reads."
    import os
    from dvc.repo import Repo
    from dcr_nb.core import dvc_projects
    rel = lambda o: os.path.relpath(o.fs_path, ROOT)
    projects = dvc_projects(ROOT)
    default_reads = {rel(d) for st in Repo(str(projects["dvc.yaml"])).index.stages for d in st.deps if type(d).__name__ != "ParamsDependency"}
    ablation = {st.name: st for st in Repo(str(projects["ablations/dvc.yaml"])).index.stages}
    assert len(ablation) >= 4, list(ablation)
    for name, st in ablation.items():
        keys = {k for d in st.deps if type(d).__name__ == "ParamsDependency" for k in (d.params or [])}
        assert not any(k.startswith("objectives.") and k != "objectives.dcr" for k in keys), (name, keys)
        if name.startswith(("stage", "end_to_end")): assert "objectives.dcr" in keys, (name, keys)
        for o in st.outs:
            assert rel(o).startswith("ablations/outputs/"), (name, rel(o))
            assert not any(rel(o).startswith(r.rstrip("/") + "/") for r in default_reads), (name, rel(o))
