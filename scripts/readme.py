"""Write README.md from nbs/index.ipynb, as `nbdev_readme` would (it needs Quarto, which cannot be installed here).

    .venv/bin/python scripts/readme.py            write README.md from the notebook's committed outputs (`make readme`
                                                  executes the notebook first, then runs this)
    .venv/bin/python scripts/readme.py --check    fail if README.md is not what the notebook renders, or breaks the
                                                  front door's rules (the test command runs this)

Rendering, as Quarto's GitHub-flavoured markdown output does it: a markdown cell as it is; a code cell's source in a
python fence unless the cell says `#| echo: false` or `#| hide` (a hidden cell shows nothing at all); its outputs
after it: markdown as it is, plain text in a plain fence. The front door's rules: at most 15 KB, and no history:
no commit hash, no date, no "passed in N s" (history lives in git, measurements in DVC outputs).
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK, README = ROOT / "nbs" / "index.ipynb", ROOT / "README.md"
MAX_BYTES = 15_000
HISTORY = {"a commit hash": re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b"),
           "a date": re.compile(r"\b(19|20)\d\d-[01]\d-[0-3]\d\b"),
           "a 'passed in N s' line": re.compile(r"passed in [\d,.]+ ?(s|min|seconds|minutes)\b")}

def directives(src: str) -> dict[str, str]:
    "The `#| key: value` (or bare `#| key`) lines at the top of a code cell."
    out = {}
    for line in src.splitlines():
        if not line.startswith("#|"): break
        key, _, value = line[2:].strip().partition(":")
        out[key.strip()] = value.strip()
    return out

def text(x) -> str: return "".join(x) if isinstance(x, list) else x

def render_output(o: dict) -> str:
    data = o.get("data", {})
    if "text/markdown" in data: return text(data["text/markdown"]).strip()
    body = text(o["text"]) if o.get("output_type") == "stream" else text(data.get("text/plain", ""))
    return f"```\n{body.rstrip()}\n```" if body.strip() else ""

def render(nb: dict) -> str:
    "The README that notebook `nb` (its JSON, with outputs) renders to."
    parts = []
    for c in nb["cells"]:
        src = text(c["source"])
        if c["cell_type"] == "markdown": parts.append(src.strip()); continue
        if c["cell_type"] != "code": continue
        d = directives(src)
        if "hide" in d: continue
        if d.get("echo", "").lower() != "false":
            body = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip()
            if body: parts.append(f"```python\n{body}\n```")
        parts += [r for o in c.get("outputs", []) if (r := render_output(o))]
    return "\n\n".join(p for p in parts if p) + "\n"

def problems(readme: str, expected: str) -> list[str]:
    "What is wrong with `readme` (empty: nothing), given what the notebook renders."
    out = [] if readme == expected else ["README.md is not what nbs/index.ipynb renders: edit the notebook, then `make readme`"]
    if (n := len(readme.encode())) > MAX_BYTES: out.append(f"README.md is {n:,} bytes; the front door holds at most {MAX_BYTES:,}")
    for what, pat in HISTORY.items():
        for m in pat.finditer(readme):
            line = readme[readme.rfind("\n", 0, m.start()) + 1:].split("\n")[0]
            out.append(f"README.md holds {what} ({m[0]!r} in {line.strip()[:90]!r}): history belongs in git")
    return out

def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]): print(__doc__); return 2
    nb = json.loads(NOTEBOOK.read_text())
    if not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"):
        print(f"FAIL: {NOTEBOOK.relative_to(ROOT)} has no outputs: run `make readme` (it executes the notebook first)"); return 1
    expected = render(nb)
    if not argv:
        README.write_text(expected); print(f"wrote README.md ({len(expected.encode()):,} bytes) from nbs/index.ipynb")
    bad = problems(README.read_text(), expected)
    for p in bad: print("FAIL:", p)
    if not bad and argv: print(f"ok: README.md is what nbs/index.ipynb renders ({len(expected.encode()):,} bytes, no history)")
    return 1 if bad else 0

if __name__ == "__main__": sys.exit(main(sys.argv[1:]))
