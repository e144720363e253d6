"""Which stage-1 and stage-2 settings let the capacity (P3) and stage-1 (P4) premises hold in the shipped world? (issue 46, item 2)

The premises study (studies/outputs/premises) measured the default recipe: the stage-2 LoRA trained directly on a blind
attribute gains +7.4 (orientation), +13.3 (viewpoint) and +11.7 (state) probe points in its 400 steps at lr 5e-4 (P3 asks
for 15), and stage 1's held-out objective is still falling at 1,200 steps with lr 1e-3 (its budget: 150). This study
measures, with the premises study's own instruments (`dcr_nb.premises.lora_capacity`, `stage1_curve`; same scenes), side
by side:

  P3   the probe gain per blind attribute for each stage-2 learning rate in `lrs2` and budget in `steps2` (batch, LoRA rank,
       alpha and dropout as params.yaml's stage2)
  P4   stage 1's held-out objective per objective in `objectives` for each stage-1 learning rate in `lrs1`, up to
       `stage1_steps` steps, and where it plateaus (the premises study's rule)

    dvc --cd studies repro recipe                     the stage: settings from studies/params.yaml (`recipe`)
    .venv/bin/python studies/world_recipe.py [--lrs2 0.001] [...] [--out DIR]

Each measured cell is kept in `work` with its settings, so an interrupted run resumes. Writes table.md, results.json and
curves.png to DIR (the stage's: studies/outputs/recipe).
"""
import argparse, hashlib, json, sys
from pathlib import Path
import numpy as np
import yaml
from dcr_nb.core import root_path
from dcr_nb.dcr_stages import DCRStageConfig, dcr_task
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.premises import PREMISE_STREAMS, lora_capacity, scene_set, stage1_curve
from dcr_nb.pretrain import load_clip, load_standin_diffusion

SECTION = "recipe"
P3_GAIN = 15.0  # probe points: the capacity premise's threshold (issue 46; studies/world_premises.py)

def parser() -> argparse.ArgumentParser:
    d = yaml.safe_load(root_path("studies/params.yaml").read_text())[SECTION]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in d.items(): p.add_argument("--" + k.replace("_", "-"), dest=k, type=type(v) if v is not None else str, default=v)
    return p

def numbers(text: str, kind=float) -> list:
    try: return [kind(x) for x in text.split(",")]
    except ValueError: raise SystemExit(f"expected a comma-separated list of numbers, got {text!r}")

class Cells:
    "Measured cells kept on disk by their settings: an interrupted run resumes where it stopped."
    def __init__(self, folder, settings: dict):
        self.folder, self.settings = Path(folder), settings; self.folder.mkdir(parents=True, exist_ok=True)
    def __call__(self, key: list, measure):
        f = self.folder / (hashlib.sha256(json.dumps([key, self.settings], sort_keys=True).encode()).hexdigest()[:16] + ".json")
        if f.exists(): return json.loads(f.read_text())
        r = measure(); f.write_text(json.dumps(r, default=float)); return r

def figure(res: dict, out: Path):
    import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
    objs = sorted({o for o, _ in (k.split("@") for k in res["P4"])})
    fig, axs = plt.subplots(1, len(objs), figsize=(5 * len(objs), 3.2), dpi=80, squeeze=False)
    for ax, o in zip(axs[0], objs):
        for k, r in res["P4"].items():
            if k.split("@")[0] != o: continue
            ax.plot(r["curve"]["step"], r["curve"]["loss"], "o-", ms=2, label=f"lr {k.split('@')[1]} (plateau {r['plateau_step']})")
        ax.axvline(res["budget_stage1"], c="r", ls="--", label=f"budget {res['budget_stage1']}")
        ax.set(title=f"stage 1, {o}: held-out objective", xlabel="step"); ax.legend(fontsize=7)
    plt.tight_layout(); fig.savefig(out / "curves.png"); plt.close(fig)

def table(res: dict, blind) -> str:
    lines = [f"P3 on the shipped CLIP: probe gain (points, 95% interval) of the stage-2 LoRA trained directly on each blind attribute, "
             f"batch {res['batch_size2']}; met at >= {P3_GAIN:g}:", "",
             "| lr | steps | " + " | ".join(blind) + " | met for |", "|---|---|" + "---|" * len(blind) + "---|"]
    for k, row in res["P3"].items():
        lr, steps = k.split("@")
        lines.append(f"| {lr} | {steps} | " + " | ".join(f"{row[a]['before_%']:.1f} -> {row[a]['after_%']:.1f} ({row[a]['gain']:+.1f} "
                     f"[{row[a]['ci95'][0]:+.1f}, {row[a]['ci95'][1]:+.1f}])" for a in blind) +
                     f" | {', '.join(a for a in blind if row[a]['gain'] >= P3_GAIN) or 'none'} |")
    lines += ["", f"P4: stage 1's held-out objective on {res['curve_scenes']} held-out scenes, batch {res['batch_size1']}, up to "
              f"{res['stage1_steps']} steps (met: plateau within the budget of {res['budget_stage1']}):", "",
              "| objective | lr | plateau step | held-out at the budget | best | at step |", "|---|---|---|---|---|---|"]
    for k, r in res["P4"].items():
        o, lr = k.split("@"); c = r["curve"]
        lines.append(f"| {o} | {lr} | {r['plateau_step'] if r['plateau_step'] is not None else 'not reached'} | {r['loss_at_budget']:.4f} | "
                     f"{r['best']:.4f} | {c['step'][int(np.argmin(c['loss']))]} |")
    return "\n".join(lines)

def main(argv=None) -> int:
    a = parser().parse_args(argv)
    lrs2, steps2, lrs1 = numbers(a.lrs2), numbers(a.steps2, int), numbers(a.lrs1)
    params = yaml.safe_load(root_path("world/params.yaml").read_text()); model = params["pretrain_clip"]["model"]
    blind = params["report"]["blind"].split(",")
    recipe = yaml.safe_load(root_path("params.yaml").read_text()); s1, s2, dcr = recipe["stage1"], recipe["stage2"], recipe["dcr"]
    clip = load_clip(model, "world/weights/clip.safetensors", "the shipped world (git tracks it; `make world` rebuilds it)")
    d = load_standin_diffusion(model, clip, "world/weights")
    tr, ytr = load_fashion_mnist("train"); te, yte = load_fashion_mnist("test")
    train, held = scene_set(tr, ytr, a.n_train, PREMISE_STREAMS["train"]), scene_set(te, yte, a.n_held, PREMISE_STREAMS["held_out"])
    cells = Cells(a.work, {"n_train": a.n_train, "n_held": a.n_held, "stage1": s1, "stage2": s2, "dcr": dcr, "every": a.every,
                           "curve_scenes": a.curve_scenes, "stage1_steps": a.stage1_steps})
    res = {"batch_size2": s2["batch_size"], "batch_size1": s1["batch_size"], "budget_stage1": s1["steps"], "curve_scenes": a.curve_scenes,
           "stage1_steps": a.stage1_steps, "P3": {}, "P4": {}}
    for lr in lrs2:
        for steps in steps2:
            row = {}
            for attr in blind:
                row[attr] = cells(["P3", attr, lr, steps], lambda: lora_capacity(
                    clip, attr, train, held, steps=steps, batch_size=s2["batch_size"], lr=lr, lora_r=s2["lora_r"],
                    lora_alpha=s2["lora_alpha"], lora_dropout=s2["lora_dropout"], warmup=s2["warmup_steps"]))
            res["P3"][f"{lr:g}@{steps}"] = row
            print(f"P3 lr {lr:g}, {steps} steps: " + ", ".join(f"{k} {v['gain']:+.1f}" for k, v in row.items()), flush=True)
    for o in a.objectives.split(","):
        spec = recipe["objectives"][o]
        for lr in lrs1:
            def measure():
                cfg = DCRStageConfig(stage=1, objective=spec["objective"], tau=spec["tau"], lam=spec["lam"], num_negatives=spec["num_negatives"],
                                     batch_size=s1["batch_size"], lr=lr, model=model, condition=dcr["condition"], target=dcr["target"],
                                     chunk_size=dcr["chunk_size"], hflip=dcr["hflip"], vflip=dcr["vflip"], seed=0)
                r = stage1_curve(dcr_task(cfg, clip, d), train[1], held[1][:a.curve_scenes], steps=a.stage1_steps, budget=s1["steps"],
                                 batch_size=s1["batch_size"], lr=lr, warmup=s1["warmup_steps"], every=a.every)
                r.pop("projector"); return r
            r = res["P4"][f"{o}@{lr:g}"] = cells(["P4", o, lr], measure)
            print(f"P4 {o} lr {lr:g}: plateau {r['plateau_step']}, best {r['best']:.4f}", flush=True)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    text = table(res, blind); print(text)
    figure(res, out)
    (out / "table.md").write_text(text + "\n"); (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    return 0

if __name__ == "__main__": sys.exit(main())
