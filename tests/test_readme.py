"""The front door: README.md is what nbs/index.ipynb renders (scripts/readme.py, in place of `nbdev_readme`, which
needs Quarto), its tables come from the committed outputs as they are now, and it holds no history."""
import json, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import readme, execute_nbs  # scripts/readme.py, scripts/execute_nbs.py

def test_readme_is_what_the_index_renders():
    r = subprocess.run([sys.executable, "scripts/readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_index_outputs_are_those_of_the_committed_results(tmp_path):
    "Executed afresh against today's docs/ and dvc.yaml files, the index renders exactly the committed README."
    nb = tmp_path / "index.ipynb"
    shutil.copy(readme.NOTEBOOK, nb)
    execute_nbs.execute(nb)
    assert readme.render(json.loads(nb.read_text())) == readme.README.read_text(), \
        "nbs/index.ipynb renders another README from today's outputs: run `make readme`"

@pytest.mark.parametrize("bad, what", [
    ("CI on a clean clone of 8b0a9b8 was green\n", "a commit hash"),
    ("Results of the run of 2026-12-05\n", "a date"),
    ("`.ci/run` passed in 1,652 s\n", "a 'passed in N s' line"),
    ("x" * 15_001, "at most 15,000")])
def test_front_door_rules_catch_history_and_size(bad, what):
    assert any(what in p for p in readme.problems(bad, bad)), readme.problems(bad, bad)
    assert readme.problems("Run `make repro`: the class token, 256 samples, 1e-4.\n", "Run `make repro`: the class token, 256 samples, 1e-4.\n") == []

def test_render_follows_quarto_directives():
    nb = {"cells": [{"cell_type": "markdown", "source": "# T\n> one line"},
                    {"cell_type": "code", "source": "#| hide\nimport os", "outputs": [{"output_type": "stream", "text": "hidden"}]},
                    {"cell_type": "code", "source": "#| echo: false\nMarkdown('x')", "outputs": [{"output_type": "execute_result", "data": {"text/markdown": "| a |", "text/plain": "<Markdown>"}}]},
                    {"cell_type": "code", "source": "1 + 1", "outputs": [{"output_type": "execute_result", "data": {"text/plain": "2"}}]}]}
    assert readme.render(nb) == "# T\n> one line\n\n| a |\n\n```python\n1 + 1\n```\n\n```\n2\n```\n"
