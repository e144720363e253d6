"""Execute the library notebooks in place, so that a reader sees their results (tables, figures, checks).

    .venv/bin/python scripts/execute_nbs.py [NOTEBOOK ...]     (default: every nbs/*.ipynb)

Cells run exactly as `nbdev_test` runs them: in the notebook's folder, skipping cells flagged with one
of settings.ini's `tst_flags` (`#| slow`, `#| gpu`: they keep whatever outputs they had) and `#| eval: false`
cells. A failing cell stops that notebook and leaves its file unchanged. Then run
`nbdev_clean` (the test command checks that it changes nothing) and commit the notebooks.
"""
import json, os, sys, time
from pathlib import Path
from execnb.shell import CaptureShell
from nbdev.config import get_config
from nbdev.process import NBProcessor
from nbdev.frontmatter import FrontmatterProc
from contextlib import chdir as working_directory

ROOT = Path(__file__).resolve().parents[1]
SKIP = set(get_config().get("tst_flags", "").split())

def _skip(cell) -> bool:
    "True for a cell `nbdev_test` would not run."
    if cell.cell_type != "code" or "nbdev_export(" in cell.source: return True
    d = getattr(cell, "directives_", {}) or {}
    return d.get("eval:", [""])[0].lower() == "false" or bool(SKIP & d.keys())

def execute(path: Path) -> float:
    "Run `path`'s cells and write their outputs into the notebook file; returns seconds taken."
    t0 = time.time()
    nb = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    shell = CaptureShell(path)
    with working_directory(path.parent): shell.run_all(nb, exc_stop=True, preproc=_skip)
    ran = {c.id: c for c in nb.cells if c.cell_type == "code" and not _skip(c)}
    raw = json.loads(path.read_text())
    for c in raw["cells"]:
        if c.get("id") in ran:
            c["outputs"] = [dict(o) for o in ran[c["id"]].get("outputs", [])]
            c["execution_count"] = ran[c["id"]].get("execution_count")
    path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n")
    return time.time() - t0

if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("DCR_NB_PROGRESS", "off")  # no progress bars (their rates and timings change on every run)
    paths = [Path(p).resolve() for p in sys.argv[1:]] or sorted((ROOT / "nbs").glob("*.ipynb"))
    failed = []
    for p in paths:
        if not p.exists(): sys.exit(f"no notebook {p}")
        try: print(f"{p.name}: executed in {execute(p):.0f} s", flush=True)
        except Exception as e: failed.append(p.name); print(f"{p.name}: FAILED, left unchanged ({type(e).__name__}: {e})", flush=True)
    if failed: sys.exit(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")
