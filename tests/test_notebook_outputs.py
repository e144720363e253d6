"""The check that library notebooks carry the outputs of their current code (scripts/execute_nbs.py --check, step 3 of
the test command) can fail: on a copy of the project, editing a code cell or a module the notebook uses makes it stale,
and absolute paths, progress bars, timings, huge outputs and a notebook never executed are each reported."""
import json, shutil
from pathlib import Path
import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def project(tmp_path, monkeypatch):
    "A copy of dcr_nb/ and two notebooks; the check's module, pointed at the copy."
    shutil.copytree(ROOT / "dcr_nb", tmp_path / "dcr_nb", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "nbs").mkdir()
    for n in ("00b_stage.ipynb", "06_evaluate.ipynb"): shutil.copy(ROOT / "nbs" / n, tmp_path / "nbs" / n)
    m = load_script("scripts/execute_nbs.py")
    monkeypatch.setattr(m, "ROOT", tmp_path)
    return m, tmp_path

def edit(path: Path, fn):
    nb = json.loads(path.read_text()); fn(nb); path.write_text(json.dumps(nb, indent=1))

def test_committed_notebooks_pass(project):
    m, tmp = project
    assert m.problems(tmp / "nbs" / "06_evaluate.ipynb") == []
    assert "dcr_nb/evaluate.py" not in [str(p.relative_to(tmp)) for p in m.closure("from dcr_nb.core import root_path")]
    assert {"core.py", "encoder.py", "data.py", "fetch.py"} <= {p.name for p in m.closure("from dcr_nb.data import render_scenes\nfrom dcr_nb.encoder import x")}

def test_edited_cell_or_module_is_stale(project):
    m, tmp = project
    nb = tmp / "nbs" / "06_evaluate.ipynb"
    edit(nb, lambda d: next(c for c in d["cells"] if c["cell_type"] == "code" and "test_eq" in "".join(c["source"]))["source"].append("\n# edited"))
    assert any("stale" in p for p in m.problems(nb))
    shutil.copy(ROOT / "nbs" / "06_evaluate.ipynb", nb)
    assert m.problems(nb) == []
    enc = tmp / "dcr_nb" / "encoder.py"                           # a module the notebook imports
    enc.write_text(enc.read_text() + "\n# edited\n")
    assert any("stale" in p for p in m.problems(nb))
    assert m.problems(tmp / "nbs" / "00b_stage.ipynb") == []      # 00b imports only stage.py: not stale

@pytest.mark.parametrize("text,what", [(f"wrote {ROOT}/outputs/x.pt\n", "an absolute path"), ("saved /tmp/tmpab12/x\n", "an absolute path"),
                                       ("train:  50%|#####     | 5/10 [00:01<00:01, 4.1it/s]\r", "a progress bar"),
                                       ("18 pairs in 0.09 s\n", "a timing"), ("forward (batch 8) 130 ms\n", "a timing")])
def test_unstable_outputs_are_reported(project, text, what):
    m, tmp = project
    nb = tmp / "nbs" / "06_evaluate.ipynb"
    edit(nb, lambda d: next(c for c in d["cells"] if c["cell_type"] == "code" and c.get("outputs"))["outputs"].append(
        {"output_type": "stream", "name": "stdout", "text": [text]}))
    assert any(what in p for p in m.problems(nb)), m.problems(nb)

def test_unexecuted_empty_or_huge(project):
    m, tmp = project
    nb = tmp / "nbs" / "06_evaluate.ipynb"
    def strip(d):
        d["metadata"].pop("dcr_nb")
        for c in d["cells"]:
            if c["cell_type"] == "code": c["outputs"] = []
    edit(nb, strip)
    assert m.problems(nb) == ["was never executed by scripts/execute_nbs.py (no outputs recorded)", "has no outputs"]
    shutil.copy(ROOT / "nbs" / "06_evaluate.ipynb", nb)
    edit(nb, lambda d: next(c for c in d["cells"] if c["cell_type"] == "code" and c.get("outputs"))["outputs"].append(
        {"output_type": "display_data", "metadata": {}, "data": {"image/png": "A" * 400_000}}))
    assert any("an output of 400 KB" in p for p in m.problems(nb))
    assert m.check([nb]) == 1
