"""How do the sampler's settings move the world report's samples row? (issue 14: samples' class 17.2% against >= 50)

The world report draws 64 samples from held-out full captions with 50 DDIM steps and no classifier-free guidance,
and asks a reader (an MLP trained on rendered scenes; 78% on true renders) for the captioned class and colour of
the garment where the caption puts it. This script reuses the shipped denoiser (world/weights/) and one reader, and
measures the same row for several samplers side by side, with more samples for a tighter interval:

    .venv/bin/python benchmarks/world_samples.py [--n 256] [--samplers ddim50,ddim200,ddim50@1.5] [--out DIR]

A sampler is `ddimS` (S DDIM steps) with an optional `@G` (guidance G; default 1, none). Prints a table with 95%
Wilson intervals; writes it and the numbers to DIR (default /tmp/world_samples). Nothing here trains: if a sampler
alone reached 50%, the world's report parameters would change, not its weights.
"""
import argparse, json, math, re, sys, time
from pathlib import Path
import numpy as np
from dcr_nb.core import root_path
from dcr_nb.encoder import create_encoder
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.pipeline import load_standin_diffusion
from dcr_nb.world import fit_reader, sample_recognition
import yaml

SAMPLER = re.compile(r"ddim(\d+)(?:@(\d+(?:\.\d+)?))?")

def parse_sampler(name: str) -> tuple[int, float]:
    "(DDIM steps, guidance) of a sampler name `ddimS` or `ddimS@G`."
    m = SAMPLER.fullmatch(name)
    if not m or int(m[1]) < 1: raise SystemExit(f"unknown sampler {name!r}: ddimS or ddimS@G (S steps >= 1, G the guidance), e.g. ddim50@1.5")
    return int(m[1]), float(m[2] or 1.0)

def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    "95% Wilson interval (%) of a proportion k/n."
    p = k / n; c = (p + z * z / (2 * n)) / (1 + z * z / n); h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (c - h), 100 * (c + h)

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=256); p.add_argument("--samplers", default="ddim50,ddim200,ddim50@1.5")
    p.add_argument("--out", default="/tmp/world_samples")
    a = p.parse_args(argv)
    samplers = {s: parse_sampler(s) for s in a.samplers.split(",")}  # every name checked before any work
    params = yaml.safe_load(root_path("world/params.yaml").read_text()); rep = params["report"]
    weights = root_path("world/weights")
    if not (weights / "clip.safetensors").is_file():
        print(f"missing {weights}/clip.safetensors: the shipped world (git tracks it; `make world` rebuilds it)", file=sys.stderr); return 2
    clip = create_encoder("lit", pretrained=str(weights / "clip.safetensors")).eval()
    d = load_standin_diffusion("lit", clip, str(weights), "make world")
    data = load_fashion_mnist("test"); t0 = time.perf_counter()
    reader = fit_reader(n=rep["n_reader"], seed=rep["seed"]); print(f"reader fitted in {time.perf_counter() - t0:.0f} s", flush=True)
    out, rows = Path(a.out), {}; out.mkdir(parents=True, exist_ok=True)
    for name, (steps, guidance) in samplers.items():
        t0 = time.perf_counter()
        r = sample_recognition(d, a.n, steps, guidance, rep["seed"], reader, data, out / f"{name}.png")
        rows[name] = {"steps": steps, "guidance": guidance, "n": a.n, "class_%": r["label_%"], "class_ci": wilson(r["label_%"] * a.n / 100, a.n),
                      "colour_%": r["color_%"], "reference_class_%": r["reference_label_%"], "seconds": time.perf_counter() - t0}
        print(f"{name}: class {r['label_%']:.1f}, colour {r['color_%']:.1f}, {rows[name]['seconds']:.0f} s", flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))  # kept as each sampler ends
    table = [f"Samples from {a.n} held-out full captions (the report's first {rep['n_samples']} among them), read by one reader "
             f"(true renders: {next(iter(rows.values()))['reference_class_%']:.1f}% class):", "",
             "| sampler | DDIM steps | guidance | class % [95% CI] | colour % | seconds |", "|---|---|---|---|---|---|"]
    table += [f"| {n} | {r['steps']} | {r['guidance']:g} | {r['class_%']:.1f} [{r['class_ci'][0]:.1f}, {r['class_ci'][1]:.1f}] | "
              f"{r['colour_%']:.1f} | {r['seconds']:.0f} |" for n, r in rows.items()]
    print("\n".join(table)); (out / "table.md").write_text("\n".join(table) + "\n")
    return 0

if __name__ == "__main__": sys.exit(main())
