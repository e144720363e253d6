"""How do the sampler's settings move the world report's samples row? (issue 14: samples' class 17.2% against >= 50)

The world report draws samples from held-out full captions (`report` in world/params.yaml: 256 of them, 50 DDIM steps,
eta 1, no classifier-free guidance) and asks a reader (an MLP trained on rendered scenes; 78% on true renders) for the captioned class and colour of
the garment where the caption puts it. This script reuses the shipped denoiser (world/weights/) and one reader, and
measures the same row for several samplers side by side, with more samples for a tighter interval:

    dvc --cd studies repro samples                    the stage: settings from studies/params.yaml (`samples`)
    .venv/bin/python studies/world_samples.py [--n 256] [--samplers ddim50,ddim200,ddim50@1.5] [--train 600,1200:w2+attn16] [--seed S] [--out DIR]

A sampler is `ddimS` (S DDIM steps) with an optional `@G` (guidance G; default 1, none), then optional options each
after a "-": `etaE` (DDIM's eta: 0 is the report's deterministic DDIM, 1 adds DDPM-like noise at every step) and
`trailing` (timesteps spaced from t = 999 down, as Lin et al. 2024 advise, instead of the shipped scheduler's
"leading" spacing, which starts 50 steps at t = 980), e.g. `ddim50-eta1-trailing`. The options are
`world.ddim_sample`'s; the report's own sampler is set in `world/params.yaml` (`report.eta`: 1, so it is `ddim50-eta1`).
`--train N[:UNET],...` also pretrains a denoiser from scratch for N steps each (in a temporary folder), with the world
pipeline's code and parameters otherwise (`run_pretrain_denoiser`; needs `dvc --cd world repro prepare`), and samples
it with the report's sampler (its steps, guidance and eta): the
training-length lever, beside the shipped denoiser's 3,000 steps. UNET changes the stand-in UNet
(`conditioning.STANDIN_UNET`: channels 32/64/64, cross-attention only at 8x8, one layer a block), parts joined by "+":

  wK       channels times K (heads too, so a head stays 32 wide)
  attn16   cross-attention at 16x16 as well as 8x8 (down and up)
  lpbN     N layers a block

Every denoiser measured also gets its sensitivity to the class word: the world report's per-attribute measure
(`denoiser_sensitivity`, pooled over t = 100-700, 128 held-out scenes) with the class changed. Prints a table with
95% Wilson intervals; writes it (table.md), the numbers (results.json, a row as each run ends) and a grid of each run's
first samples (<run>.png) to DIR (the stage's: studies/outputs/samples).
"""
import argparse, contextlib, json, re, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
from dcr_nb import conditioning, world
from dcr_nb.core import root_path
from dcr_nb.encoder import create_encoder
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.pretrain import PretrainDenoiserConfig, load_standin_diffusion, run_pretrain_denoiser
from dcr_nb.verdicts import proportion_interval
from dcr_nb.world import fit_reader, sample_recognition
import yaml

SAMPLER = re.compile(r"ddim(\d+)(?:@(\d+(?:\.\d+)?))?((?:-eta\d+(?:\.\d+)?|-trailing)*)")
UNET_PART = re.compile(r"w([1-9]\d*)|attn16|lpb([1-9]\d*)")

def unet_overrides(name: str) -> dict:
    "`STANDIN_UNET` overrides for a UNet variant name (parts wK, attn16, lpbN joined by '+'; '' = the world's)."
    out, base = {}, conditioning.STANDIN_UNET
    for q in filter(None, name.split("+")):
        if not (m := UNET_PART.fullmatch(q)): raise SystemExit(f"unknown UNet variant {name!r} (part {q!r}): parts wK, attn16 or lpbN joined by '+'")
        if q.startswith("w"):
            k = int(m[1]); out |= {"block_out_channels": tuple(k * c for c in base["block_out_channels"]),
                                   "attention_head_dim": tuple(k * h for h in base["attention_head_dim"])}
        elif q == "attn16": out |= {"down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")}
        else: out["layers_per_block"] = int(m[2])
    return out

def parse_train(spec: str) -> list[tuple[int, str]]:
    "`--train` as [(steps, UNet variant)]: comma-separated N or N:UNET."
    runs = []
    for item in filter(None, spec.split(",")):
        n, _, unet = item.partition(":")
        if not (n.isdigit() and int(n) > 0): raise SystemExit(f"--train {spec!r}: comma-separated positive step counts, each with an optional :UNET, e.g. 600,1200:w2+attn16")
        unet_overrides(unet); runs.append((int(n), unet))
    return runs

@contextlib.contextmanager
def standin_unet_as(overrides: dict):
    "`conditioning.STANDIN_UNET` with `overrides` while inside (what `run_pretrain_denoiser` builds a new UNet from)."
    saved = dict(conditioning.STANDIN_UNET); conditioning.STANDIN_UNET.update(overrides)
    try: yield
    finally: conditioning.STANDIN_UNET.clear(); conditioning.STANDIN_UNET.update(saved)

def class_sensitivity(d, n: int = 128, seed: int = 0, data=None) -> dict:
    "The world report's denoiser sensitivity (pooled over t = 100-700) with the class word changed instead of a benchmark attribute."
    saved = world.N_VALUES; world.N_VALUES = {**saved, "label": 10}  # `other_value` draws among a training scene's values
    try: return world.denoiser_sensitivity(d, n, attributes=("label",), seed=seed, data=data)["label"]["pooled"]
    finally: world.N_VALUES = saved

def parse_sampler(name: str) -> tuple[int, float, dict]:
    "(DDIM steps, guidance, options) of a sampler name `ddimS[@G][-etaE][-trailing]`; options {}: eta 0 and the scheduler's spacing."
    m = SAMPLER.fullmatch(name)
    if not m or int(m[1]) < 1:
        raise SystemExit(f"unknown sampler {name!r}: ddimS[@G][-etaE][-trailing] (S steps >= 1, G the guidance, E DDIM's eta), e.g. ddim50@1.5 or ddim50-eta1-trailing")
    opts = {}
    for o in filter(None, m[3].split("-")):
        if o == "trailing": opts["spacing"] = "trailing"
        else: opts["eta"] = float(o[3:])
    return int(m[1]), float(m[2] or 1.0), opts

@contextlib.contextmanager
def sampler_options(opts: dict):
    "`world.ddim_sample` (what `sample_recognition` draws with) given `opts` (eta, spacing) while inside; {} leaves it."
    saved = world.ddim_sample
    if opts: world.ddim_sample = lambda d, cond, steps, guidance, seed, eta=0.0: saved(d, cond, steps, guidance, seed, **({"eta": eta} | opts))
    try: yield
    finally: world.ddim_sample = saved

def wilson(k: float, n: int) -> tuple[float, float]:
    "95% Wilson interval (%) of a proportion k/n."
    iv = proportion_interval(k, n); return iv["lo"], iv["hi"]

SECTION = "samples"  # this study's settings in studies/params.yaml

def parser() -> argparse.ArgumentParser:
    "The command line; every default is the study's setting in studies/params.yaml."
    s = yaml.safe_load(root_path("studies/params.yaml").read_text())[SECTION]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=s["n"]); p.add_argument("--samplers", default=s["samplers"])
    p.add_argument("--seed", type=int, default=s["seed"], help="draws the captions, the noise and the reader (none: the world report's; another seed gives other captions, to check a choice made on the report's)")
    p.add_argument("--out", default=s["out"]); p.add_argument("--train", default=s["train"], help="denoisers to pretrain: training steps, each with an optional :UNET, e.g. 600,1500:w2+attn16")
    return p

def main(argv=None) -> int:
    a = parser().parse_args(argv)
    samplers = {s: parse_sampler(s) for s in a.samplers.split(",") if s}  # every name checked before any work
    train_steps = parse_train(a.train)
    if not samplers and not train_steps: raise SystemExit("nothing to measure: give --samplers, --train or both")
    if a.n < 1: raise SystemExit(f"--n {a.n}: the number of samples must be >= 1")
    params = yaml.safe_load(root_path("world/params.yaml").read_text()); rep, model = params["report"], params["pretrain_clip"]["model"]
    weights, seed = root_path("world/weights"), rep["seed"] if a.seed is None else a.seed
    if not (weights / "clip.safetensors").is_file():
        print(f"missing {weights}/clip.safetensors: the shipped world (git tracks it; `make world` rebuilds it)", file=sys.stderr); return 2
    clip = create_encoder(model, pretrained=str(weights / "clip.safetensors")).eval()
    d = load_standin_diffusion(model, clip, str(weights), "make world")
    prep = root_path(params["prepare"]["out"])
    if train_steps and not (prep / "scenes.npz").is_file():
        print(f"missing {prep}/scenes.npz: --train needs the world's scenes, `dvc --cd world repro prepare` (16 s)", file=sys.stderr); return 2
    data = load_fashion_mnist("test"); t0 = time.perf_counter()
    reader = fit_reader(n=rep["n_reader"], seed=seed); print(f"reader fitted in {time.perf_counter() - t0:.0f} s", flush=True)
    out, rows = Path(a.out), {}; out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="world_samples_")) if train_steps else None  # trained denoisers: not outputs
    runs = [(name, "shipped", None, steps, guidance, opts) for name, (steps, guidance, opts) in samplers.items()]
    pd_ = params["pretrain_denoiser"]; report_sampler = (rep["sample_steps"], rep["guidance"], {"eta": rep["eta"]} if rep["eta"] else {})
    runs += [(f"trained{n}{'-' + u if u else ''}:ddim{report_sampler[0]}", f"{n}{' ' + u if u else ''}", (n, u), *report_sampler) for n, u in train_steps]
    sensitivity = {}  # denoiser -> its class sensitivity, measured once
    for name, denoiser, train, steps, guidance, opts in runs:  # train: None (the shipped denoiser) or (steps, UNet variant) to pretrain
        t0, train_s, dn = time.perf_counter(), 0.0, d
        if train:
            n_steps, unet = train; folder = work / f"denoiser{n_steps}{'-' + unet if unet else ''}"
            cfg = PretrainDenoiserConfig.from_dict({**{k: x for k, x in pd_.items() if k != "check_n"}, "model": model,
                                                    "steps": n_steps, "warmup_steps": min(pd_["warmup_steps"], n_steps // 10),
                                                    "ckpt_every": min(n_steps, pd_["ckpt_every"]), "data": str(prep), "out": str(folder), "train_dir": str(folder / "train")})
            with standin_unet_as(unet_overrides(unet)): dn = run_pretrain_denoiser(cfg)
            train_s = time.perf_counter() - t0; t0 = time.perf_counter()
        if denoiser not in sensitivity: sensitivity[denoiser] = class_sensitivity(dn, 128, seed, data)
        with sampler_options(opts): r = sample_recognition(dn, a.n, steps, guidance, seed, reader, data, out / f"{name.replace(':', '-')}.png")
        rows[name] = {"denoiser": denoiser, "steps": steps, "guidance": guidance, "options": opts, "n": a.n, "class_%": r["label_%"],
                      "class_ci": wilson(r["label_%"] * a.n / 100, a.n), "colour_%": r["color_%"],
                      "class_sensitivity_%": sensitivity[denoiser]["gain_%"], "class_sensitivity_ci": sensitivity[denoiser]["ci95"],
                      "unet_params_M": sum(q.numel() for q in dn.unet.parameters()) / 1e6,
                      "reference_class_%": r["reference_label_%"], "train_s": train_s, "seconds": time.perf_counter() - t0}
        print(f"{name}: class {r['label_%']:.1f}, colour {r['color_%']:.1f}, class sensitivity {rows[name]['class_sensitivity_%']:.1f}%, "
              f"sampled in {rows[name]['seconds']:.0f} s", flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))  # kept as each run ends
    table = [f"Samples from {a.n} held-out full captions (seed {seed}" + (f"; the report's first {rep['n_samples']} among them" if seed == rep["seed"] else "; not the report's") + "), read by one reader "
             f"(true renders: {next(iter(rows.values()))['reference_class_%']:.1f}% class):", "",
             "| run | denoiser (training steps, UNet) | UNet M params | DDIM steps | guidance | class % [95% CI] | colour % | class sensitivity % | training s | sampling s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {n} | {r['denoiser']} | {r['unet_params_M']:.2f} | {r['steps']} | {r['guidance']:g} | {r['class_%']:.1f} [{r['class_ci'][0]:.1f}, {r['class_ci'][1]:.1f}] | "
              f"{r['colour_%']:.1f} | {r['class_sensitivity_%']:.1f} | {r['train_s']:.0f} | {r['seconds']:.0f} |" for n, r in rows.items()]
    print("\n".join(table)); (out / "table.md").write_text("\n".join(table) + "\n")
    if work: shutil.rmtree(work)
    return 0

if __name__ == "__main__": sys.exit(main())
