"""The results the README shows are the outputs the committed dvc.lock records.

`make results` copies the compare stage's summary and figures from outputs/figures/ to docs/ (tracked by
git), and the ablations' (ablations/dvc.yaml, claim 4) from ablations/outputs/; the README links the figures and
repeats the verdict tables. These checks fail when a copy is not the
output of the run whose lock is committed (a stale figure, a hand-edited number), without rerunning anything.
"""
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {  # copy -> (the lock that records it, the output)
    "docs/results.md": ("dvc.lock", "outputs/figures/summary.md"), "docs/pd_plane.png": ("dvc.lock", "outputs/figures/pd_plane.png"),
    "docs/mmvp_per_category.png": ("dvc.lock", "outputs/figures/mmvp_per_category.png"),
    "docs/grad_cosines.png": ("dvc.lock", "outputs/figures/grad_cosines.png"), "docs/tsne.png": ("dvc.lock", "outputs/figures/tsne.png"),
    "docs/ablations.md": ("ablations/dvc.lock", "ablations/outputs/summary.md"),
    "docs/ablations_pd_plane.png": ("ablations/dvc.lock", "ablations/outputs/pd_plane.png"),
    "docs/ablations_mmvp_per_category.png": ("ablations/dvc.lock", "ablations/outputs/mmvp_per_category.png"),
}

def locked(lock: str) -> dict[str, str]:
    "The outputs a lock records, by their path from the checkout's root (ablations/dvc.lock says ../ablations/outputs/...)."
    from dcr_nb.pipeline import _locked_md5s
    return _locked_md5s(ROOT / lock, ROOT)

def test_published_results_are_the_locked_outputs():
    for copy, (lock, out) in PUBLISHED.items():
        md5s = locked(lock)
        assert out in md5s, f"{lock} records no {out}: run make repro (or make ablations)"
        md5 = hashlib.md5((ROOT / copy).read_bytes()).hexdigest()
        assert md5 == md5s[out], f"{copy} is not the {out} that {lock} records: run `make results` after `make repro` / `make ablations`"

def test_readme_verdicts_are_the_published_ones():
    "Every claim's verdict in the README (rendered from nbs/index.ipynb) is the published one: claims 1-3 from the default run, 4 from the ablations."
    readme = (ROOT / "README.md").read_text()
    rows = [l for l in (ROOT / "docs/results.md").read_text().splitlines() if l.startswith("| ") and "**" in l and not l.startswith("| 4.")]
    rows += [l for l in (ROOT / "docs/ablations.md").read_text().splitlines() if l.startswith("| 4.")]
    assert len(rows) == 4, rows
    for r in rows:
        claim_and_verdict = " | ".join(r.split(" | ")[:2]) + " | "
        assert claim_and_verdict in readme, f"the README's verdict table lacks this claim and verdict:\n{claim_and_verdict}"
    for f in PUBLISHED:
        if f.endswith(".png"): assert f"]({f})" in readme, f"the README does not show {f}"
