"""The results the README shows are the outputs the committed dvc.lock records.

`make results` copies the compare stage's summary and figures from outputs/figures/ to docs/ (tracked by
git); the README links the figures and repeats the verdict table. These checks fail when a copy is not the
output of the run whose lock is committed (a stale figure, a hand-edited number), without rerunning anything.
"""
import hashlib
from pathlib import Path
import yaml

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {"docs/results.md": "outputs/figures/summary.md", "docs/pd_plane.png": "outputs/figures/pd_plane.png",
             "docs/mmvp_per_category.png": "outputs/figures/mmvp_per_category.png",
             "docs/grad_cosines.png": "outputs/figures/grad_cosines.png", "docs/tsne.png": "outputs/figures/tsne.png"}

def locked() -> dict[str, str]:
    stages = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for st in stages.values() for o in st.get("outs", []) if "md5" in o}

def test_published_results_are_the_locked_outputs():
    lock = locked()
    for copy, out in PUBLISHED.items():
        assert out in lock, f"dvc.lock records no {out}: run make repro"
        md5 = hashlib.md5((ROOT / copy).read_bytes()).hexdigest()
        assert md5 == lock[out], f"{copy} is not the {out} that dvc.lock records: run `make results` after `make repro`"

def test_readme_verdicts_are_the_published_ones():
    readme, results = (ROOT / "README.md").read_text(), (ROOT / "docs/results.md").read_text()
    rows = [l for l in results.splitlines() if l.startswith("| ") and "**" in l]  # the verdict rows
    assert len(rows) == 4, rows
    for r in rows: assert r in readme, f"the README's verdict table lacks this row of docs/results.md:\n{r}"
    for f in PUBLISHED:
        if f.endswith(".png"): assert f"]({f})" in readme, f"the README does not show {f}"
