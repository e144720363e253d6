"""Which change to the world's training scenes would let the stand-in CLIP name garments? (issue 14, measured before a rebuild)

The world report's class rows fall short (zero-shot on neutral Fashion-MNIST test items 30.3% against >= 60, linear
probe 77.9 against >= 85, class read from held-out scenes 39.4 against >= 60). One suspect: a neutral item (large,
white, upright, centred, alone) never occurs in training, where items are 6-19 px wide, often several, covered or
keystoned. This script pretrains the stand-in CLIP from scratch with the world pipeline's own code
(`run_pretrain_clip`: LiT on the locked MiniLM text tower, the world's parameters except the number of steps) on
variants of the world's training scenes, side by side at one reduced budget, and measures each as the world report
does:

  base       the world's scenes (world/outputs/prepare/scenes.npz), unchanged
  plainF     a fraction F (percent) of them replaced by the same item rendered neutrally (`neutral_spec`), captioned
             by the world's own short-caption rule (`short_caption` at the world's mention rates)

The README's table was measured on 2026-12-03 with a world whose scenes had no neutral renders. That measurement
led to the prepare parameter `p_neutral` (world/params.yaml: 0.25), so the world's scenes now hold neutral renders
and `base` means them; plainF swaps a further F% of all scenes.

    .venv/bin/python benchmarks/world_levers.py [--steps 600] [--variants base,plain10,plain25] [--out DIR]

Needs the world pipeline's prepared data (`dvc --cd world repro prepare`, 16 s). Prints a table; writes it and the
numbers to DIR (default /tmp/world_levers). Training took 0.48 s a step on 2 CPU cores (289 s for 600 steps, measured
2026-12-03); a whole variant, scenes written to measurements printed, took under 7 minutes.
"""
import argparse, json, sys, time
from pathlib import Path
import numpy as np
from dcr_nb.core import root_path
from dcr_nb.data import PrepareConfig, arrays_to_specs, full_caption, load_eval_set, load_npz, neutral_spec, render, save_npz, short_caption, specs_to_arrays
from dcr_nb.encoder import get_tokenizer
from dcr_nb.evaluate import evaluate_d_ability
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.pipeline import PretrainClipConfig, load_clip, run_pretrain_clip
from dcr_nb.world import attribute_probe
import yaml

def variant_scenes(name: str, src: dict, rates: dict, images: np.ndarray, seed: int = 0) -> dict:
    "The world's scenes as variant `name` (see the module's docstring)."
    if name == "base": return dict(src)
    if not name.startswith("plain") or not name[5:].isdigit(): raise SystemExit(f"unknown variant {name!r}: base or plainF (F in percent)")
    frac, rng, out = int(name[5:]) / 100, np.random.default_rng(seed), {k: np.array(v) for k, v in src.items()}
    specs = arrays_to_specs(out); size = out["images"].shape[1]
    for i in np.flatnonzero(rng.random(len(specs)) < frac):
        s = neutral_spec(specs[i].item, specs[i].label); specs[i] = s
        out["images"][i] = render(s, images, size); out["short"][i] = short_caption(s, rates, rng); out["full"][i] = full_caption(s)
    return out | specs_to_arrays(specs)

def measure(clip_path: Path, data: Path, model: str, n_scene_probe: int) -> dict:
    clip, tok = load_clip(model, str(clip_path), "world_levers"), get_tokenizer(model)
    d, _ = evaluate_d_ability(clip, tok, load_eval_set(data / "eval_test.npz"), load_eval_set(data / "eval_train.npz"), progress=False)
    scenes = attribute_probe(clip, n=n_scene_probe, attributes=("label",))["label"]["accuracy"]
    return {"zero_shot": 100 * d["zero_shot_acc"], "linear_probe": 100 * d["linear_probe_acc"], "class_in_scenes": scenes}

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600); p.add_argument("--variants", default="base,plain10,plain25")
    p.add_argument("--out", default="/tmp/world_levers"); p.add_argument("--scene-probe", type=int, default=4000)
    a = p.parse_args(argv)
    params = yaml.safe_load(root_path("world/params.yaml").read_text()); prep = root_path(params["prepare"]["out"])
    if not (prep / "scenes.npz").is_file():
        print(f"missing {prep}/scenes.npz: run `dvc --cd world repro prepare` first (16 s)", file=sys.stderr); return 2
    rates = PrepareConfig.from_dict(params["prepare"]).rates()  # the caption mention rates (not p_neutral)
    src, (images, _) = load_npz(prep / "scenes.npz"), load_fashion_mnist("train")
    out, rows = Path(a.out), {}
    for name in a.variants.split(","):
        folder = out / name; folder.mkdir(parents=True, exist_ok=True)
        save_npz(folder / "scenes.npz", **variant_scenes(name, src, rates, images))
        for f in ("eval_test.npz", "eval_train.npz"):
            if not (folder / f).exists(): (folder / f).symlink_to(prep / f)
        cfg = PretrainClipConfig.from_dict({**{k: v for k, v in params["pretrain_clip"].items() if k != "report_n"},
                                            "steps": a.steps, "warmup_steps": min(params["pretrain_clip"]["warmup_steps"], a.steps // 10),
                                            "ckpt_every": a.steps, "data": str(folder), "out": str(folder), "train_dir": str(folder / "train")})
        t0 = time.perf_counter(); path = run_pretrain_clip(cfg); took = time.perf_counter() - t0
        rows[name] = {**measure(path, folder, cfg.model, a.scene_probe), "train_s": took}
        print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[name].items()), flush=True)
    table = [f"LiT pretraining for {a.steps} steps of batch {params['pretrain_clip']['batch_size']} (the world's: "
             f"{params['pretrain_clip']['steps']}), measured as the world report does (%):", "",
             "| variant | zero-shot (neutral test) | linear probe | class in scenes | training s |", "|---|---|---|---|---|"]
    table += [f"| {n} | {r['zero_shot']:.1f} | {r['linear_probe']:.1f} | {r['class_in_scenes']:.1f} | {r['train_s']:.0f} |" for n, r in rows.items()]
    print("\n".join(table)); (out / "table.md").write_text("\n".join(table) + "\n"); (out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0

if __name__ == "__main__": sys.exit(main())
