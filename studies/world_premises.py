"""Does the shipped world meet the premises under which reconstruction can teach an image tower? (issue 46, measured before
any claim is judged again)

The four instruments of nbs/08e_premises.ipynb (dcr_nb.premises), on the shipped CLIP and denoiser (world/weights/) with
the default run's recipe (params.yaml: dcr, stage1, stage2, objectives), per designed-blind attribute (world/params.yaml
report.blind), each with a 95% interval, against the thresholds fixed in that notebook:

  P1 headroom   an oracle projector fed the true attributes, in the released slot, trained to its plateau: held-out
                loss without the attribute minus with it (met: interval above 0)
  P2 signal     the class share of the per-image gradients of each objective (stage 1's projector at its budget) on the
                pooled embeddings, in excess of shuffled labels (met: interval above 0)
  P3 capacity   the stage-2 LoRA trained directly on the attribute at the stage-2 budget: probe gain (met: >= 15 points)
  P4 stage 1    the projector's held-out loss curve past the stage-1 budget (met: plateau within the budget)

and, on the shipped denoiser, how far the released condition (one vector in every slot) moves the cross-attention
probabilities against a vector per slot (figure attention.png).

    dvc --cd studies repro premises                   the stage: settings from studies/params.yaml (`premises`)
    .venv/bin/python studies/world_premises.py [--oracle-steps N] [...] [--out DIR]   the same, a setting overridden

Writes table.md, results.json, curves.png and attention.png to DIR (the stage's: studies/outputs/premises).
"""
import argparse, json, sys
from pathlib import Path
import numpy as np
import torch
import yaml
from dcr_nb.core import root_path
from dcr_nb.dcr_stages import DCRStageConfig, dcr_task
from dcr_nb.encoder import image_embedding
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.premises import (PREMISE_STREAMS, cross_attention_probs, embedding_gradients, gradient_signal, lora_capacity,
                             scene_set, slot_headroom, stage1_curve)
from dcr_nb.pretrain import load_clip, load_standin_diffusion

SECTION = "premises"
P3_GAIN = 15.0  # probe points: the capacity premise's threshold (issue 46)

def parser() -> argparse.ArgumentParser:
    d = yaml.safe_load(root_path("studies/params.yaml").read_text())[SECTION]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in d.items(): p.add_argument("--" + k.replace("_", "-"), dest=k, type=type(v) if v is not None else str, default=v)
    return p

def figures(res: dict, out: Path):
    import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.2), dpi=80)
    c = res["P1"]["curve"]; axs[0].plot(c["step"], c["loss"], "o-", ms=3)
    if (p := res["P1"]["plateau_step"]) is not None: axs[0].axvline(p, ls=":", c="k", label=f"plateau {p}")
    axs[0].set(title="P1: the oracle slot's held-out loss", xlabel="step", ylabel="denoiser loss"); axs[0].legend(fontsize=7)
    for o, r in res["P4"].items():
        l = np.asarray(r["curve"]["loss"]); axs[1].plot(r["curve"]["step"], (l - l.min()) / max(l[0] - l.min(), 1e-12), "o-", ms=3, label=f"{o} (plateau {r['plateau_step']})")
    axs[1].axvline(res["budget_stage1"], c="r", ls="--", label=f"budget {res['budget_stage1']}")
    axs[1].set(title="P4: stage 1's held-out objective (0 = best, 1 = start)", xlabel="step"); axs[1].legend(fontsize=7)
    plt.tight_layout(); fig.savefig(out / "curves.png"); plt.close(fig)
    att = res["attention"]; names = list(att)
    fig, ax = plt.subplots(figsize=(7, 2.4), dpi=80); y = np.arange(len(names))
    ax.barh(y - 0.2, [max(att[n]["same"], 1e-12) for n in names], 0.4, label="one vector in every slot (the released condition)")
    ax.barh(y + 0.2, [att[n]["per_slot"] for n in names], 0.4, label="a vector per slot, same size")
    ax.set(xscale="log", yticks=y, yticklabels=[n.split(".transformer")[0] for n in names], xlabel="max |change of an attention probability|",
           title="The shipped denoiser's cross-attention: what the condition can move"); ax.legend(fontsize=7)
    plt.tight_layout(); fig.savefig(out / "attention.png"); plt.close(fig)

def table(res: dict, blind) -> str:
    f = lambda v, ci, d=4: f"{v:+.{d}f} [{ci[0]:+.{d}f}, {ci[1]:+.{d}f}]"
    lines = [f"Premises of the shipped world, per designed-blind attribute (95% intervals; {res['n_held']} held-out scenes, "
             f"{res['n_train']} training scenes):", "",
             "| attribute | P1 worth through the slot (loss) | P1 share of all attributes' worth | " +
             " | ".join(f"P2 {o}: class share % (excess over shuffled)" for o in res["P2"]) + " | P3 probe before -> after (gain) | met |",
             "|---|---|---|" + "---|" * len(res["P2"]) + "---|---|"]
    for a in blind:
        p1, p3 = res["P1"]["attributes"][a], res["P3"][a]
        met = {"P1": p1["ci95"][0] > 0, "P2": all(res["P2"][o][a]["ci95"][0] > 0 for o in res["P2"]), "P3": p3["gain"] >= P3_GAIN,
               "P4": all(r["reached"] for r in res["P4"].values())}
        res.setdefault("met", {})[a] = met
        p2 = " | ".join(f"{res['P2'][o][a]['share_%']:.2f} ({f(res['P2'][o][a]['excess'], res['P2'][o][a]['ci95'], 2)})" for o in res["P2"])
        lines.append(f"| {a} | {f(p1['worth'], p1['ci95'])} | {p1['share_%']:.0f}% | {p2} | {p3['before_%']:.1f} -> {p3['after_%']:.1f} "
                     f"({f(p3['gain'], p3['ci95'], 1)}) | {', '.join(k for k, v in met.items() if v) or 'none'} |")
    p1 = res["P1"]
    lines += ["", f"P1's oracle: held-out loss {p1['loss_all']:.4f} with every attribute, {p1['loss_none']:.4f} with none (the empty prompt's slot); "
              f"plateau at step {p1['plateau_step']} of {p1['curve']['step'][-1]}.",
              "P4, stage 1 (budget " + str(res["budget_stage1"]) + " steps): " + "; ".join(
                  f"{o} plateau at {r['plateau_step']} ({'within' if r['reached'] else 'NOT within'} the budget; held-out {r['loss_at_budget']:.4f} at the budget, best {r['best']:.4f})"
                  for o, r in res["P4"].items()) + ".",
              "The released condition moves the shipped denoiser's cross-attention probabilities by at most "
              f"{max(v['same'] for v in res['attention'].values()):.1e} (a vector per slot of the same size: "
              f"{min(v['per_slot'] for v in res['attention'].values()):.1e} or more).",
              "", "Met when: P1 and P2 intervals above 0, P3 gain >= 15 points, P4 plateau within the budget (nbs/08e_premises.ipynb)."]
    return "\n".join(lines)

def main(argv=None) -> int:
    a = parser().parse_args(argv)
    params = yaml.safe_load(root_path("world/params.yaml").read_text()); model = params["pretrain_clip"]["model"]
    blind = params["report"]["blind"].split(",")
    recipe = yaml.safe_load(root_path("params.yaml").read_text())
    clip = load_clip(model, "world/weights/clip.safetensors", "the shipped world (git tracks it; `make world` rebuilds it)")
    d = load_standin_diffusion(model, clip, "world/weights")
    tr, ytr = load_fashion_mnist("train"); te, yte = load_fashion_mnist("test")
    train, held = scene_set(tr, ytr, a.n_train, PREMISE_STREAMS["train"]), scene_set(te, yte, a.n_held, PREMISE_STREAMS["held_out"])
    s1, s2, dcr = recipe["stage1"], recipe["stage2"], recipe["dcr"]
    res = {"n_train": a.n_train, "n_held": a.n_held, "budget_stage1": s1["steps"], "P4": {}, "P2": {}, "P3": {}}
    for o in a.objectives.split(","):  # P4, and the projector at the budget for P2
        spec = recipe["objectives"][o]
        cfg = DCRStageConfig(stage=1, objective=spec["objective"], tau=spec["tau"], lam=spec["lam"], num_negatives=spec["num_negatives"],
                             batch_size=s1["batch_size"], lr=s1["lr"], model=model, condition=dcr["condition"], target=dcr["target"],
                             chunk_size=dcr["chunk_size"], hflip=dcr["hflip"], vflip=dcr["vflip"], seed=0)
        task = dcr_task(cfg, clip, d)
        r4 = stage1_curve(task, train[1], held[1][:a.curve_scenes], steps=a.stage1_steps, budget=s1["steps"], batch_size=s1["batch_size"],
                          lr=s1["lr"], warmup=s1["warmup_steps"], every=a.every)
        task.builder.load_projector_state(r4.pop("projector")); task.eval()
        print(f"P4 {o}: plateau {r4['plateau_step']} (budget {s1['steps']})", flush=True)
        res["P4"][o] = r4
        grads = embedding_gradients(task, held[1], batch_size=s2["batch_size"], draws=a.draws).numpy()
        res["P2"][o] = {attr: gradient_signal(grads, np.array([getattr(s, attr) for s in held[0]])) for attr in blind}
        print(f"P2 {o}: " + ", ".join(f"{k} {v['excess']:+.2f} {v['ci95']}" for k, v in res["P2"][o].items()), flush=True)
    res["P1"] = slot_headroom(d, train, held, attrs=blind, steps=a.oracle_steps, batch_size=a.oracle_batch, every=a.every * 2, draws=a.draws)
    print("P1: " + ", ".join(f"{k} {v['worth']:+.4f} {v['ci95']}" for k, v in res["P1"]["attributes"].items()), flush=True)
    for attr in blind:
        res["P3"][attr] = lora_capacity(clip, attr, train, held, steps=s2["steps"], batch_size=s2["batch_size"], lr=s2["lr"],
                                        lora_r=s2["lora_r"], lora_alpha=s2["lora_alpha"], lora_dropout=s2["lora_dropout"], warmup=s2["warmup_steps"])
        print(f"P3 {attr}: {res['P3'][attr]}", flush=True)
    e = d.empty.expand(2, -1, -1); g = torch.Generator().manual_seed(0)
    with torch.no_grad(): v = task.builder.projector(image_embedding(clip, held[1][:2]))[:, None]  # the last objective's projector, two scenes
    u = torch.randn(e.shape, generator=g); u = u / u.norm(dim=-1, keepdim=True) * v.norm(dim=-1, keepdim=True)
    probs = cross_attention_probs(d.unet, d.codec.encode(held[1][:2]), torch.tensor([100, 700]), e + v, [e, e + v, e + u])
    res["attention"] = {n: {"same": (p1 - p0).abs().max().item(), "per_slot": (p2 - p0).abs().max().item()} for n, (p0, p1, p2) in probs.items()}
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    text = table(res, blind); print(text)
    figures(res, out)
    (out / "table.md").write_text(text + "\n"); (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    return 0

if __name__ == "__main__": sys.exit(main())
