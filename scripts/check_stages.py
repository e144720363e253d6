"""Check every stage notebook run by the stage runner (`python -m dcr_nb.stage`, papermill with progress; it is a
declared dependency) in the dvc.yaml files of every DVC project of the checkout (the default pipeline at the root;
world/, ablations/ and paper/, each a DVC project of its own, whose commands must start from the root with
`cd ..`), and every notebook in nbs/stages/:
exactly one cell tagged `parameters`, no committed outputs or execution counts; the names the stage passes with
`papermill -p` are names its parameters cell assigns, and one it does not pass defaults to "" (not given: the
parameters file's value); every setting the notebook reads from a parameters file (`-p reads`) is declared among
the stage's `params`, and every declared setting is read (or used by the command line), so that DVC reruns it when
the setting changes and no dataclass default runs in its place; every dcr_nb module its notebook imports (and
those import, at top level) is among its deps. Also: a stage's only
persistent output (`persist: true`, kept across reruns) is the `train_dir` it passes, the folder whose
checkpoint the trainer resumes only when the stage's inputs are unchanged (anything else persisted
would survive a rerun with no such check). And a stage that declares dcr_nb/encoder.py also declares
dcr_nb/model_configs, the stand-ins' open_clip architectures, which encoder.py reads when imported."""
import ast, functools, json, os, shlex, sys
from pathlib import Path
import nbformat
from dvc.repo import Repo
from dcr_nb.core import ConfigError, dvc_projects, lookup, parse_reads, read_params
sys.path.insert(0, str(Path(__file__).resolve().parent))
from execute_nbs import closure  # scripts/execute_nbs.py: the dcr_nb modules a text imports, transitively

def check_notebook(nb_path: Path, errors: list) -> dict:
    "Appends the problems of one stage notebook to `errors`; returns its parameters (name -> the default's AST)."
    nb = nbformat.read(nb_path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(params) != 1: errors.append(f"{nb_path}: {len(params)} cells tagged 'parameters', expected exactly 1")
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")):
            errors.append(f"{nb_path}: cell {i} has committed outputs or an execution count (run nbdev_clean)")
    if len(params) != 1: return {}
    from papermill.translators import PythonTranslator  # what papermill reads of the cell: a name it cannot parse is "unknown" to it
    seen = {p.name for p in PythonTranslator.inspect(params[0])}
    names = {t.id: node.value for node in ast.parse(params[0].source).body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    if unread := sorted(set(names) - seen):
        errors.append(f"{nb_path}: papermill cannot parse the parameters cell's line for {', '.join(unread)} (an `=` in its value or comment?): "
                      "it would warn that the stage passes an unknown parameter")
    return names

def stage_args(toks: list[str], i: int) -> dict[str, str]:
    "The `-p NAME VALUE` pairs after token `i` (`dcr_nb.stage`) of a stage's command."
    return {toks[j + 1]: toks[j + 2] for j in range(i, len(toks) - 2) if toks[j] in ("-p", "--parameters")}

def stage_reads(arg: dict) -> list[tuple[str, str, str]]:
    "What a stage's notebook reads from its parameters files: (field or "", file from the root, dotted key)."
    return [(f, os.path.normpath(file), d) for f, file, d in parse_reads(arg.get("reads", ""), arg.get("params", "params.yaml"))]

def read_setting(arg: dict, key: str, root: Path) -> list[str]:
    "The value of setting `key` that a stage's `reads` takes from its parameters file (as a one-item list; empty if none)."
    found = []
    for field, file, dotted in stage_reads(arg):
        try: v = lookup(read_params(root / file), dotted, file)
        except ConfigError: continue  # undeclared_reads names a read that is not there
        if field == key: found = [v]
        elif not field and isinstance(v, dict) and key in v: found = [v[key]]
    return [str(x) for x in found]

@functools.lru_cache(maxsize=None)
def notebook_code(nb: Path) -> list[str]:
    "The dcr_nb modules (dcr_nb/<name>.py) a stage notebook runs when its cells run: its imports and theirs, at top level."
    text = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
    return [f"dcr_nb/{m.name}" for m in closure(text, top_level=True)]  # an import inside a function: check_declared_code sees it when it runs

@functools.lru_cache(maxsize=None)
def raw_stages(dvcfile: str) -> dict:
    "A dvc.yaml's stages before interpolation."
    import yaml
    return yaml.safe_load(Path(dvcfile).read_text())["stages"]

def undeclared_reads(stage, name: str, arg: dict, root: Path) -> list[str]:
    """A stage's notebook reads its settings from a parameters file (`-p params FILE -p reads "SECTION ..."`, see
    `StageConfig.from_params`); DVC reruns the stage when one changes only if the stage declares it among its `params`.
    The problems: each read (`section`, `section.key`, `field<-section.key`, `file:section`) that no declared key covers,
    and each declared key that nothing reads (a forgotten read would leave the dataclass default running)."""
    if "reads" not in arg: return []
    declared = {(os.path.relpath(p.fs_path, root), k) for p in stage.params for k in (p.params or [])}  # (file from the root, key)
    reads, out = [(file, dotted) for _, file, dotted in stage_reads(arg)], []
    for file, dotted in reads:
        if not any(f == file and (dotted == k or dotted.startswith(k + ".")) for f, k in declared):
            out.append(f"stage {name}: reads `{dotted}` from {file} but does not declare it among its params "
                       f"(DVC would not rerun it when that changes); declared: {', '.join(sorted(f'{f}:{k}' for f, k in declared)) or 'none'}")
    raw = raw_stages(stage.dvcfile.path)[stage.name.split("@")[0]]
    raw_cmd = str(raw.get("do", raw)["cmd"])  # before interpolation: what the command line itself takes from the file
    for f, k in sorted(declared):  # the other way round: a declared setting nothing reads (a forgotten read leaves a default running)
        if "${" + k in raw_cmd: continue  # the command line uses it (the launcher's settings, a path built from it)
        if not any(f == rf and (r == k or r.startswith(k + ".") or k.startswith(r + ".")) for rf, r in reads):
            out.append(f"stage {name}: declares `{k}` of {f} among its params but its notebook reads nothing of it (`reads`: {arg['reads']})")
    return out

def check(root: Path) -> tuple[list[str], str]:
    "The problems of the checkout at `root` (empty: none), and the one-line summary printed when there are none."
    root, errors = Path(root).resolve(), []
    stage_nbs = sorted((root / "nbs" / "stages").glob("*.ipynb"))
    names = {p: check_notebook(p, errors) for p in stage_nbs}
    used, projects = set(), dvc_projects(root)
    rel = lambda out: os.path.relpath(out.fs_path, root)  # a dep's or output's path from the checkout's root
    stages = [st for project in projects.values() for st in Repo(str(project)).index.stages]
    def label(st):  # prepare, stage1@dcr-0 (the default pipeline); world/dvc.yaml:prepare (another DVC project)
        f = os.path.relpath(st.dvcfile.path, root)
        return st.name if f == "dvc.yaml" else f"{f}:{st.name}"
    for stage in stages:
        cmd = " ".join(stage.cmd) if isinstance(stage.cmd, list) else (stage.cmd or "")
        toks = shlex.split(cmd.replace("&&", " && "))
        if Path(stage.repo.root_dir).resolve() != root and toks[:3] != ["cd", "..", "&&"]:
            errors.append(f"stage {label(stage)}: its command must start with `cd .. &&` "
                          "(every stage runs from the checkout's root)"); continue
        if "papermill" in toks:
            errors.append(f"stage {label(stage)}: runs papermill directly; run its notebook with `python -m dcr_nb.stage IN OUT -p ...` "
                          "(progress on the terminal, a kernel on local sockets)"); continue
        if "dcr_nb.stage" not in toks: continue
        i = toks.index("dcr_nb.stage")
        dep_paths = [rel(d) for d in stage.deps]
        nb = (root / toks[[j for j in range(i + 1, len(toks)) if toks[j].endswith(".ipynb")][0]]).resolve()
        for f in notebook_code(nb) if nb.is_file() else []:
            if f not in dep_paths:
                errors.append(f"stage {label(stage)}: its notebook runs {f}, which is not among its deps (DVC would not rerun it when that code changes)")
        if "dcr_nb/stage.py" not in dep_paths:
            errors.append(f"stage {label(stage)}: runs dcr_nb.stage but does not declare dcr_nb/stage.py among its deps")
        if "dcr_nb/encoder.py" in dep_paths and "dcr_nb/model_configs" not in dep_paths:  # the stand-ins' architectures are data
            errors.append(f"stage {label(stage)}: declares dcr_nb/encoder.py but not dcr_nb/model_configs, the open_clip configs it "
                          "builds the stand-ins from (an edited width or depth would not rerun the stage)")
        used.add(nb)
        arg = stage_args(toks, i); passed = list(arg)
        tdir = [arg["train_dir"]] if "train_dir" in arg else read_setting(arg, "train_dir", root)
        for o in stage.outs:
            if o.persist and (rel(o) not in [os.path.normpath(t) for t in tdir]):
                errors.append(f"stage {label(stage)}: persists {rel(o)}, which is not its train_dir {tdir} "
                              "(only a train_dir is checked against the stage's inputs before it is reused)")
        errors += undeclared_reads(stage, label(stage), arg, root)
        if nb not in names: errors.append(f"stage {label(stage)}: {nb} is not a notebook in nbs/stages/"); continue
        if extra := sorted(set(passed) - set(names[nb])):
            errors.append(f"stage {label(stage)}: passes {extra}, which {nb.name}'s parameters cell does not define")
        for k in sorted(set(names[nb]) - set(passed)):  # not given: its default must say "not given" ("": the file's value)
            if not (isinstance(names[nb][k], ast.Constant) and names[nb][k].value == ""):
                errors.append(f"stage {label(stage)}: does not pass `{k}`, so {nb.name} would run with its default "
                              f"({ast.unparse(names[nb][k])}); pass it, or read it from the parameters file")
    for p in stage_nbs:
        if p.resolve() not in used: errors.append(f"{p}: no dvc.yaml stage runs it")
    return errors, (f"ok: {len(stage_nbs)} stage notebook(s), {len(used)} run by the {len(stages)} stages of "
                    f"{', '.join(projects)}, parameters consistent")

if __name__ == "__main__":
    errors, ok = check(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    for e in errors: print("FAIL:", e)
    if errors: sys.exit(1)
    print(ok)
