"""Where do the bits part between kinds of CPU, and what does pinning the numerics cost?

Runs the default pipeline's own code (`prepare`, `run_evaluate` of the shipped CLIP, a few steps of stage 1, then of
stage 2 from that projector) once per *setting*, each in a fresh process, and compares the files they write by MD5 (as
`dvc.lock` does) and their arrays by largest absolute difference. A setting is a numerics mode times a cap:

- numerics `native` (each library's own kernels for this CPU) or `pinned` (what the stage runner sets: `dcr_nb.stage.numerics_env`);
- cap `none`, or a lower instruction set imposed on every library that has a switch for it (`CAPS`): the machine
  pretends to be a lesser x86-64 CPU. `auto` picks the cap just below this CPU's own level (avx2 on an AVX-512 CPU,
  sse4 on an AVX2 CPU). Under pinned numerics the cap is the outer environment, and the runner's pinned variables
  are set over it, exactly as on a machine whose environment differs.

Native under two caps shows which probe the instruction set moves; pinned under two caps must give identical files.
Each setting runs `--rounds` times, interleaved, so that both modes see the same machine load: the same setting must
give the same files every round, and the wall and CPU seconds per probe are medians over the rounds.
The pinned hashes can be compared with another machine's: `--save FILE` writes them, `--reference FILE` compares.
`benchmarks/numerics_reference.json` holds those of the machine it names; on another kind of CPU,
`--modes pinned --cap none --reference benchmarks/numerics_reference.json` checks it in a few minutes.

    .venv/bin/python benchmarks/numerics.py [--probes ops,prepare,eval,stage1,stage2] [--cap auto] [--rounds 1]
                                           [--steps 2] [--n-eval 300] [--save F.json] [--reference F.json]

Prints a table of short hashes (probe output x setting), where native and pinned part under the cap, the largest
differences, and seconds per probe; exits 1 if pinned outputs differ between the caps or between rounds.
"""
import argparse, hashlib, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dcr_nb.stage import NUMERICS_ENV, THREAD_VARS, numerics_env  # the standard library only: nothing numerical is loaded yet

# Lower instruction sets, imposed through each library's own switch. MKL's MKL_ENABLE_INSTRUCTIONS is honoured on Intel CPUs.
CAPS = {
    "none": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
    "sse4": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
             "OPENBLAS_CORETYPE": "Nehalem", "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"},
}
PROBES = ("ops", "prepare", "eval", "stage1", "stage2")  # stage2 needs stage1, eval and stage1 need prepare

def cpu_flags() -> set[str]:
    "This CPU's flags from /proc/cpuinfo (empty where it cannot be read)."
    try: return set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration): return set()

def auto_cap(flags: set[str]) -> str:
    "The cap just below this CPU's level: avx2 on an AVX-512 CPU, sse4 on an AVX2 one."
    if "avx512f" in flags: return "avx2"
    if "avx2" in flags: return "sse4"
    raise SystemExit("this CPU has no AVX2: pinned numerics need it, and there is no lower cap to compare with")

def setting_env(mode: str, cap: str, base=None) -> dict[str, str]:
    "The environment of a worker: the outer one without any numerics variable, the cap's variables, then the mode's (as the stage runner sets them)."
    owned = set(numerics_env("pinned")) | {k for c in CAPS.values() for k in c} | {NUMERICS_ENV, *THREAD_VARS}
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in owned}
    return {**env, **CAPS[cap], **numerics_env(mode), "DCR_NB_ROOT": str(ROOT), "DCR_NB_PROGRESS": "off", "PYTHONHASHSEED": "0"}

# ----------------------------------------------------------------------------------------------------------- worker
def md5(path) -> str: return hashlib.md5(Path(path).read_bytes()).hexdigest()

class Clock:
    "Wall and CPU seconds (this process and its threads) of each probe."
    def __init__(self): self.seconds = {}
    def __call__(self, name):
        import contextlib
        @contextlib.contextmanager
        def timed():
            w, c = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            yield
            c2 = resource.getrusage(resource.RUSAGE_SELF)
            self.seconds[name] = {"wall": time.perf_counter() - w, "cpu": c2.ru_utime + c2.ru_stime - c.ru_utime - c.ru_stime}
        return timed()

def op_outputs() -> dict:
    "The kernels the pipeline uses, on fixed inputs made by NumPy's generator: {name: array}."
    import numpy as np, torch, torch.nn.functional as F
    r = np.random.default_rng(0); t = lambda *s: torch.from_numpy(r.standard_normal(s).astype(np.float32))
    x, w, img, cw, q = t(64, 256), t(384, 256), t(16, 32, 32, 32), t(64, 32, 3, 3), t(4, 2, 64, 32)  # 16 images: NNPACK's threshold
    out = {"matmul (MKL)": x @ w.T, "conv2d": F.conv2d(img, cw, padding=1),
           "conv2d channels-last": F.conv2d(img.to(memory_format=torch.channels_last), cw, padding=1).contiguous(),
           "layer_norm": F.layer_norm(x, (256,)), "group_norm": F.group_norm(img, 8), "softmax": x.softmax(-1), "gelu": F.gelu(x),
           "attention (sdpa)": F.scaled_dot_product_attention(q, q, q), "sum": x.sum(), "randn": torch.randn(4096, generator=torch.Generator().manual_seed(0))}
    out = {k: v.detach().numpy() for k, v in out.items()}
    xn = x.numpy()
    out |= {"numpy exp (float32)": np.exp(xn), "numpy matmul (OpenBLAS)": xn @ w.numpy().T}
    return out

def worker(out: Path, probes: list[str], steps: int, n_eval: int) -> dict:
    "Run `probes` into `out` (in this process, whose environment is the setting); returns hashes, seconds and the numerics state."
    clock, files, arrays = Clock(), {}, {}
    with clock("import"):
        import numpy as np, torch
        import dcr_nb.core  # applies the in-process part of pinned numerics
        from dcr_nb.stage import numerics_state
    state = numerics_state()
    if "ops" in probes:
        with clock("ops"): ops = op_outputs()
        files |= {f"ops/{k}": hashlib.md5(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in ops.items()}
        arrays |= {f"ops/{k}": v for k, v in ops.items()}
    data = out / "prepare"
    if "prepare" in probes:
        from dcr_nb.data import PrepareConfig, prepare
        with clock("prepare"):
            prepare(PrepareConfig(n_scenes=256, pairs_per_category=4, n_probe=max(n_eval, 100), out=str(data)), data, log=lambda s: None)
        files |= {f"prepare/{p.name}": md5(p) for p in sorted(data.glob("*.npz"))}
        mmvp = sorted(p for p in (data / "mmvp").rglob("*") if p.is_file())  # the benchmark folder as one line: the MD5 of its files' MD5s
        files[f"prepare/mmvp ({len(mmvp)} files)"] = hashlib.md5("".join(f"{p.relative_to(data)} {md5(p)}\n" for p in mmvp).encode()).hexdigest()
    if "eval" in probes:
        from dcr_nb.compare import EvaluateConfig, run_evaluate
        cfg = EvaluateConfig(name="baseline", data=str(data), n_eval=n_eval, n_probe_train=n_eval, n_features=n_eval,
                             n_attributes=n_eval, out=str(out / "evaluate"))
        with clock("eval"): run_evaluate(cfg)
        files |= {f"eval/{f}": md5(out / "evaluate" / f) for f in ("features.npz", "metrics.json", "mmvp_statements.csv")}
        arrays["eval/features"] = np.load(out / "evaluate/features.npz")["features"]
    if "stage1" in probes or "stage2" in probes:
        import yaml
        from dcr_nb.dcr_stages import DCRStageConfig, run_dcr_stage
        p = yaml.safe_load((ROOT / "params.yaml").read_text())  # the default profile's settings, at `steps` steps
        base = {k: v for k, v in p["dcr"].items() if k in DCRStageConfig.__dataclass_fields__} | p["objectives"]["dcr"]
        for s in (1, 2):
            if f"stage{s}" not in probes and not (s == 1 and "stage2" in probes): continue
            st = {k: v for k, v in p[f"stage{s}"].items() if k in DCRStageConfig.__dataclass_fields__}
            cfg = DCRStageConfig(**{**base, **st, "stage": s, "steps": steps, "warmup_steps": min(st["warmup_steps"], steps), "ckpt_every": steps,
                                    "probe_every": min(st["probe_every"], 1), "seed": 0, "data": str(data), "out": str(out / f"stage{s}"),
                                    "train_dir": str(out / f"train{s}"), "projector": str(out / "stage1/projector.pt") if s == 2 else ""})
            with clock(f"stage{s}"): path = run_dcr_stage(cfg)
            files[f"stage{s}/{path.name}"] = md5(path)
            sd = torch.load(path, map_location="cpu", weights_only=False)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
            arrays |= {f"stage{s}/{k}": v.float().numpy() for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point()}
    np.savez(out / "arrays.npz", **{k.replace("/", "|"): v for k, v in arrays.items()})
    return {"files": files, "seconds": clock.seconds, "state": state}

# ----------------------------------------------------------------------------------------------------------- parent
def run_setting(work: Path, name: str, env: dict, args) -> dict:
    "One worker process for a setting; its result."
    out = work / name; out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--worker", str(out), "--probes", ",".join(args.probes), "--steps", str(args.steps), "--n-eval", str(args.n_eval)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"setting {name} failed:\n{r.stderr[-4000:]}")
    return json.loads((out / "result.json").read_text())

def max_diffs(a: Path, b: Path) -> dict[str, float]:
    "Per probe (the part of an array's name before '|'): the largest absolute difference between two workers' arrays."
    import numpy as np
    x, y, out = np.load(a), np.load(b), {}
    for k in x.files:
        if k in y.files and x[k].shape == y[k].shape:
            probe = k.split("|")[0] if not k.startswith("ops|") else k.replace("|", "/"); d = float(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)).max()) if x[k].size else 0.0
            out[probe] = max(out.get(probe, 0.0), d)
    return out

def median(xs): xs = sorted(xs); return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

def report(results: dict, names: list[str], work: Path, cap: str) -> int:
    "Print the comparison; returns the exit status (1: pinned outputs differ between the caps or between rounds)."
    first = {n: results[n][0] for n in names}
    files = list(dict.fromkeys(f for n in names for f in first[n]["files"]))
    print("\nnumerics state per setting:")
    for n in names: print(f"  {n:<14} {first[n]['state']}")
    w = max(len(f) for f in files)
    print(f"\n{'output':<{w}}  " + "  ".join(f"{n:<14}" for n in names))
    for f in files: print(f"{f:<{w}}  " + "  ".join(f"{first[n]['files'].get(f, '-')[:8]:<14}" for n in names))
    status, pairs = 0, [(f"{m}/none", f"{m}/{cap}") for m in ("native", "pinned") if cap != "none" and {f"{m}/none", f"{m}/{cap}"} <= set(names)]
    pairs += [("native/none", "pinned/none")] if {"native/none", "pinned/none"} <= set(names) else []
    for a, b in pairs:
        differ = [f for f in files if first[a]["files"].get(f) != first[b]["files"].get(f)]
        d = max_diffs(work / f"{a.replace('/', '_')}-r0/arrays.npz", work / f"{b.replace('/', '_')}-r0/arrays.npz")
        print(f"\n{a} vs {b}: {len(files) - len(differ)} of {len(files)} outputs identical" + (f"; differ: {', '.join(differ)}" if differ else ""))
        if d: print("  largest |difference|: " + ", ".join(f"{k} {v:.3g}" for k, v in d.items()))
        if a.startswith("pinned") and b.startswith("pinned") and differ: status = 1
    for n in names:
        if (bad := [f for r in results[n][1:] for f in r["files"] if r["files"][f] != first[n]["files"][f]]):
            print(f"\n{n}: outputs differ between rounds: {', '.join(sorted(set(bad)))}"); status = 1 if n.startswith("pinned") else status
    probes = list(dict.fromkeys(p for n in names for p in first[n]["seconds"]))
    print(f"\nseconds per probe (median of {len(results[names[0]])} round(s); wall / CPU of the process and its threads):")
    print(f"{'probe':<9}" + "".join(f"{n:>20}" for n in names) + ("   pinned / native (wall, CPU)" if {"native/none", "pinned/none"} <= set(names) else ""))
    for p in probes:
        med = {n: {k: median([r["seconds"][p][k] for r in results[n] if p in r["seconds"]]) for k in ("wall", "cpu")} for n in names}
        row = f"{p:<9}" + "".join(f"{med[n]['wall']:>10.1f} /{med[n]['cpu']:>7.1f}" for n in names)
        if {"native/none", "pinned/none"} <= set(names):
            a, b = med["native/none"], med["pinned/none"]
            row += f"   {b['wall'] / max(a['wall'], 1e-9):.2f}x, {b['cpu'] / max(a['cpu'], 1e-9):.2f}x"
        print(row)
    return status

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated, of {', '.join(PROBES)}")
    p.add_argument("--modes", default="native,pinned", help="comma-separated numerics modes: native, pinned")
    p.add_argument("--cap", default="auto", help="the lower instruction set to compare with: auto, avx2, sse4, or none (only uncapped settings)")
    p.add_argument("--rounds", type=int, default=1, help="runs of every setting, interleaved")
    p.add_argument("--steps", type=int, default=2, help="training steps of stage 1 and of stage 2 (the default profile's batch size and settings)")
    p.add_argument("--n-eval", type=int, default=300, help="test items, probe items and attribute scenes of the evaluation")
    p.add_argument("--work", default="", help="folder for the workers' outputs (default: a temporary one, removed)")
    p.add_argument("--save", default="", help="write the pinned setting's hashes (and this CPU, library versions) to this JSON file")
    p.add_argument("--reference", default="", help="compare the pinned hashes with a file written by --save (e.g. on another kind of CPU)")
    a = p.parse_args(argv)
    a.probes = [x for x in a.probes.split(",") if x]
    if bad := [x for x in a.probes if x not in PROBES]: raise SystemExit(f"--probes: unknown {', '.join(bad)}; choose from {', '.join(PROBES)}")
    if ("eval" in a.probes or "stage1" in a.probes or "stage2" in a.probes) and "prepare" not in a.probes: a.probes.insert(0, "prepare")
    if a.worker:
        out = Path(a.worker); r = worker(out, a.probes, a.steps, a.n_eval)
        (out / "result.json").write_text(json.dumps(r)); return 0
    modes = [m for m in a.modes.split(",") if m]
    if bad := [m for m in modes if m not in ("native", "pinned")]: raise SystemExit(f"--modes: unknown {', '.join(bad)}; choose native and/or pinned")
    if a.rounds < 1 or a.steps < 1 or a.n_eval < 20: raise SystemExit("--rounds and --steps must be >= 1, --n-eval >= 20")
    if a.work and Path(a.work).exists() and any(Path(a.work).iterdir()): raise SystemExit(f"--work {a.work}: not empty (the workers write their folders there)")
    flags = cpu_flags(); cap = auto_cap(flags) if a.cap == "auto" else a.cap
    if cap not in CAPS: raise SystemExit(f"--cap {a.cap}: choose auto, avx2, sse4 or none (no capped settings: timings only)")
    names = [f"{m}/{c}" for m in modes for c in dict.fromkeys(("none", cap))]
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?") if flags else "?"
    print(f"CPU: {cpu} ({os.cpu_count()} logical CPUs; AVX-512: {'yes' if 'avx512f' in flags else 'no'}, AMX: {'yes' if 'amx_tile' in flags else 'no'}); "
          f"cap compared: {cap}; probes: {', '.join(a.probes)}; {a.rounds} round(s)")
    with tempfile.TemporaryDirectory(prefix="dcr-numerics-") as tmp:
        work = Path(a.work or tmp); results = {n: [] for n in names}
        for r in range(a.rounds):
            for n in names:
                t0 = time.perf_counter(); m, c = n.split("/")
                results[n].append(run_setting(work, f"{m}_{c}-r{r}", setting_env(m, c), a))
                print(f"round {r + 1}: {n} done in {time.perf_counter() - t0:.0f} s", flush=True)
        status = report(results, names, work, cap)
    pinned = results.get("pinned/none", [None])[0]
    if (a.save or a.reference) and not pinned: raise SystemExit("--save and --reference need the pinned mode (--modes ...,pinned)")
    if a.save:
        import numpy, torch
        from dcr_nb.core import package_code
        Path(a.save).write_text(json.dumps({"cpu": cpu, "torch": torch.__version__, "numpy": numpy.__version__, "probes": a.probes, "steps": a.steps,
                                            "n_eval": a.n_eval, "files": pinned["files"], "code": package_code()}, indent=1) + "\n")
        print(f"\nwrote the pinned hashes to {a.save}")
    if a.reference: status = compare_reference(json.loads(Path(a.reference).read_text()), pinned["files"], a) or status
    return status

def compare_reference(ref: dict, files: dict, a) -> int:
    "Compare the pinned outputs here with a reference written by --save (on another CPU, say); 1 if any differs."
    import torch
    from dcr_nb.core import package_code
    if (ref["probes"], ref["steps"], ref["n_eval"]) != (a.probes, a.steps, a.n_eval):
        raise SystemExit(f"the reference was made with --probes {','.join(ref['probes'])} --steps {ref['steps']} --n-eval {ref['n_eval']}: run with those")
    differ = [f for f in ref["files"] if ref["files"][f] != files.get(f)]
    print(f"\npinned here vs the reference ({ref['cpu']}, torch {ref['torch']}): {len(ref['files']) - len(differ)} of {len(ref['files'])} outputs identical"
          + (f"; differ: {', '.join(differ)}" if differ else ""))
    code = package_code()
    if changed := sorted(m for m in ref["code"].keys() | code.keys() if ref["code"].get(m) != code.get(m)):
        print(f"  the reference was made from other code ({', '.join(changed)} changed since): a difference may come from the code, not the CPU")
    if ref["torch"] != torch.__version__: print(f"  the reference used torch {ref['torch']}, this run {torch.__version__}")
    return int(bool(differ))

if __name__ == "__main__": sys.exit(main())
