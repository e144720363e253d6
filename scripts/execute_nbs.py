"""Execute the library notebooks in place, so that a reader sees their results (tables, figures, checks), and check
that the committed outputs are those of the current code.

    .venv/bin/python scripts/execute_nbs.py [NOTEBOOK ...]     execute (default: every nbs/*.ipynb); `make notebooks`
    .venv/bin/python scripts/execute_nbs.py --check             check every library notebook (the test command runs this)

Cells run exactly as `nbdev_test` runs them: in the notebook's folder, skipping cells flagged with one of settings.ini's
`tst_flags` (`#| slow`, `#| gpu`: they keep whatever outputs they had) and `#| eval: false` cells. Progress bars are
off (`TQDM_DISABLE`, `DCR_NB_PROGRESS=off`): their rates and timings would change on every run. A failing cell stops
that notebook and leaves its file unchanged. Then run `nbdev_clean` (the test command checks that it changes nothing).

Stale or not: executing a notebook records in its metadata (`dcr_nb.executed_with`) a hash of what its outputs depend
on: the source of its code cells, every `dcr_nb` module it imports (and the modules those import, transitively), and
the shipped world weights (`world/weights/`) when that code names them. `--check` recomputes the hash and fails for a
notebook that was never executed this way, whose hash differs (edit a cell or a module it uses, and it is stale until
re-executed), whose outputs hold an absolute path, a progress bar or a timing (they change on every run), or an output
larger than 300 KB. (A cell that says `fake clock` in its source may print timings: they do not change.)
"""
import hashlib, json, os, re, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "dcr_nb"                        # notebook metadata key (settings.ini: allowed_metadata_keys)
MAX_OUTPUT = 300_000                  # bytes of one output as stored (a PNG is base64)
IMPORT = re.compile(r"\bdcr_nb\.(\w+)|^\s*from\s+\.(\w+)\s+import|^\s*from\s+(?:dcr_nb|\.)\s+import\s+([\w, ]+)", re.M)
ABSOLUTE = re.compile(r"(?<![\w.])(/tmp/|/root/|/home/|/work/|/private/|/var/folders/)|" + re.escape(str(ROOT)))
PROGRESS = re.compile(r"\d+/\d+ \[\d\d:\d\d|\bit/s\b|s/it\b|\r")
TIMING = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|s|sec|seconds|minutes|min)\b(?!\w)")

def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]

def modules(text: str, top_level: bool = False) -> set[str]:
    "Names of the dcr_nb modules `text` imports (`top_level`: only unindented imports, those that run when it is loaded)."
    if top_level: text = "\n".join(l for l in text.splitlines() if l.startswith(("from ", "import ")))
    found = set()
    for a, b, c in IMPORT.findall(text):
        found |= {a, b} | {n.strip() for n in c.split(",")}
    return {m for m in found if m and (ROOT / "dcr_nb" / f"{m}.py").is_file() and not m.startswith("_")}

def closure(text: str, top_level: bool = False) -> list[Path]:
    "The module files `text` imports, and those they import, transitively."
    todo, seen = modules(text, top_level), set()
    while todo:
        m = todo.pop(); seen.add(m)
        todo |= modules((ROOT / "dcr_nb" / f"{m}.py").read_text(), top_level) - seen
    return [ROOT / "dcr_nb" / f"{m}.py" for m in sorted(seen)]

def executed_with(path: Path, nb: dict | None = None) -> str:
    "The hash of what `path`'s outputs depend on (see the module docstring)."
    nb = nb or json.loads(path.read_text())
    cells = "\n".join(code_cells(nb))
    files = closure(cells)
    if any("world/weights" in t for t in [cells, *(f.read_text() for f in files)]):
        files += sorted(p for p in (ROOT / "world" / "weights").rglob("*") if p.is_file())
    h = hashlib.sha256(cells.encode())
    for f in files: h.update(f"\0{f.relative_to(ROOT)}\0".encode() + hashlib.md5(f.read_bytes()).digest())
    return h.hexdigest()[:16]

def _skip(cell, skip_flags) -> bool:
    "True for a cell `nbdev_test` would not run."
    if cell.cell_type != "code" or "nbdev_export(" in cell.source: return True
    d = getattr(cell, "directives_", {}) or {}
    return d.get("eval:", [""])[0].lower() == "false" or bool(skip_flags & d.keys())

def execute(path: Path) -> float:
    "Run `path`'s cells and write their outputs (and the hash of what they depend on) into the notebook file; returns seconds taken."
    from execnb.shell import CaptureShell
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    from contextlib import chdir
    skip_flags = set(get_config().get("tst_flags", "").split())
    skip = lambda c: _skip(c, skip_flags)
    t0 = time.time()
    raw = json.loads(path.read_text())
    stamp = executed_with(path, raw)
    nb = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    for c in nb.cells:   # execnb leaves a cell's old outputs in place when the cell now prints nothing
        if c.cell_type == "code" and not skip(c): c.outputs = []
    shell = CaptureShell(path)
    with chdir(path.parent): shell.run_all(nb, exc_stop=True, preproc=skip)
    ran = {c.id: c for c in nb.cells if c.cell_type == "code" and not skip(c)}
    never = {c.id for c in nb.cells if c.cell_type == "code" and (getattr(c, "directives_", {}) or {}).get("eval:", [""])[0].lower() == "false"}
    for c in raw["cells"]:
        if c.get("id") in ran:
            c["outputs"] = [dict(o) for o in ran[c["id"]].get("outputs", [])]
            c["execution_count"] = ran[c["id"]].get("execution_count")
        elif c.get("id") in never: c["outputs"], c["execution_count"] = [], None   # `#| eval: false`: not run, no output kept
    raw["metadata"][KEY] = {"executed_with": stamp}
    path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n")
    return time.time() - t0

def output_text(o: dict) -> str:
    parts = [o.get("text", "")] if "text" in o else []
    parts += [v for k, v in o.get("data", {}).items() if not k.startswith("image/")]
    parts += o.get("traceback", [])
    return "".join("".join(p) if isinstance(p, list) else str(p) for p in parts)

def problems(path: Path) -> list[str]:
    "What is wrong with `path`'s committed outputs (empty: nothing)."
    nb, out = json.loads(path.read_text()), []
    stamp = nb.get("metadata", {}).get(KEY, {}).get("executed_with")
    if not stamp: out.append("was never executed by scripts/execute_nbs.py (no outputs recorded)")
    elif stamp != executed_with(path, nb): out.append("outputs are stale: its code cells or a dcr_nb module it uses changed since it was executed")
    if not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"): out.append("has no outputs")
    for c in nb["cells"]:
        for o in c.get("outputs") or []:
            text, where = output_text(o), f"cell {c.get('id')}"
            if len(json.dumps(o)) > MAX_OUTPUT: out.append(f"{where}: an output of {len(json.dumps(o)) // 1000} KB (at most {MAX_OUTPUT // 1000} KB)")
            for name, pat in (("an absolute path", ABSOLUTE), ("a progress bar", PROGRESS), ("a timing", TIMING)):
                if pat is TIMING and "fake clock" in "".join(c["source"]): continue   # timings of a fake clock are the same on every run
                if m := pat.search(text):
                    line = text[text.rfind("\n", 0, m.start()) + 1:].split("\n")[0]
                    out.append(f"{where}: {name} in its output ({line.strip()[:100]!r})")
    return out

def check(paths) -> int:
    bad = {p: problems(p) for p in paths}
    for p, pr in bad.items():
        for x in pr: print(f"FAIL: {p.relative_to(ROOT)}: {x}")
    n_bad = sum(bool(v) for v in bad.values())
    size = sum(p.stat().st_size for p in paths)
    if n_bad:
        print(f"{n_bad} of {len(paths)} library notebook(s) need attention: fix the cell, then run `make notebooks` "
              f"(or `.venv/bin/python scripts/execute_nbs.py NOTEBOOK`) and `nbdev_clean`, and commit them")
        return 1
    print(f"ok: {len(paths)} library notebooks carry the outputs of their current code ({size / 1e6:.1f} MB in all)")
    return 0

if __name__ == "__main__":
    args = sys.argv[1:]
    paths = [Path(p).resolve() for p in args if p != "--check"] or sorted((ROOT / "nbs").glob("*.ipynb"))
    for p in paths:
        if not p.exists(): sys.exit(f"no notebook {p}")
    if "--check" in args: sys.exit(check(paths))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("DCR_NB_PROGRESS", "off")  # no progress bars: their rates and timings change on every run
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    failed, t0 = [], time.time()
    for p in paths:
        try: print(f"{p.name}: executed in {execute(p):.0f} s", flush=True)
        except Exception as e: failed.append(p.name); print(f"{p.name}: FAILED, left unchanged ({type(e).__name__}: {e})", flush=True)
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths) - len(failed)} notebook(s) executed in {time.time() - t0:.0f} s; {len(paths)} notebook file(s): {size / 1e6:.2f} MB")
    if failed: sys.exit(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")
