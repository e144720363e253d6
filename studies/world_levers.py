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
  vitWxL     the world's scenes, an image tower of width W and L layers (the world's: vit128x4; heads of 32)
  batchN     the world's scenes, batches of N (the world's: 128)
  pxS        the same scenes (items, layouts, captions) rendered at S px, and a tower of 8x8 patches of S/8 px
             (the world's: px32; the neutral test and probe sets are rendered at S px too)
  stepsN     this variant trains N steps (default: --steps)
  patchP     a tower of P px patches (the world's: 4 at 32 px, an 8x8 token grid; patch2 gives 16x16 tokens)
  rnW        a convolutional image tower instead of the ViT: open_clip's ModifiedResNet (CLIP's RN50 design), one
             bottleneck block a stage, stem width W (rn16: 1.5 M parameters); is the ViT's lack of a convolutional
             prior what keeps the class out of its features?
  twinsF     class-only hard negatives: F percent of every batch are twin pairs, a world scene and its twin (the same
             scene with an item of another class, captioned with the same words but the class noun: `twin_scenes`).
             In a batch of 128 random scenes almost no two captions differ only in the class, so once colour,
             position, count and text tell the captions apart the loss stops paying for the class; a twin pair can be
             told apart by the class alone.
  ceW        LiT's loss plus W/10 times the cross-entropy of a linear class head on the image embedding (ce10: weight 1):
             a stand-in pretrained to name its classes outright, as a web-trained CLIP can
  supervised the cross-entropy alone, no captions: how much of the class can this tower learn from the scenes in
             this many steps when told it directly (a ceiling on what any caption signal could teach; its zero-shot is
             meaningless, its text projection is never trained)

Parts combine with "+": `vit256x4+batch256+steps1200`, `px64+steps1200`, `patch2`, `rn16+steps1200`, `twins50`, `ce10`, `supervised+rn16`.

The first measurement (2026-12-03, plain10 and plain25 against base, with a world whose scenes had no neutral renders)
led to the prepare parameter `p_neutral` (world/params.yaml: 0.25), so the world's scenes now hold neutral renders
and `base` means them; plainF swaps a further F% of all scenes.

    dvc --cd studies repro levers                     the stage: settings from studies/params.yaml (`levers`)
    .venv/bin/python studies/world_levers.py [--steps 600] [--variants base,vit256x4,batch256] [--out DIR] [--work DIR]

Needs the world pipeline's prepared data (`dvc --cd world repro prepare`, 16 s). Prints a table; writes it (table.md)
and the numbers (results.json) to --out (the stage's: studies/outputs/levers), adding to what earlier runs into it
measured on the same world scenes (rows made from other scenes, e.g. before a world rebuild, are dropped; the stage
starts from an empty folder). The scene variants and checkpoints go to --work (none: a temporary folder, removed at
the end; a folder given is kept, and its scene variants are reused while the world's scenes are unchanged). On 2 CPU cores (measured 2026-12-03): base at 600 steps
took 389 s; estimated from it and the world's 3,000-step build (1,240 s), about 3 minutes of that encode the short
captions with MiniLM, once each, and the image tower's step costs about 0.33 s at batch 128; vit256x4 1,157 s, batch256 1,078 s, px64 681 s (plus 2-3 minutes of measuring each).
Measured 2026-12-05 (600 steps unless named): twins50 257 s, ce10 232 s, supervised 161 s, twins50+rn16 118 s,
supervised+rn16+steps6000 411 s, ce10+steps3000 906 s (training only).
"""
import argparse, dataclasses, json, re, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from dcr_nb.core import file_md5, root_path, seed_everything
from dcr_nb.data import (PrepareConfig, arrays_to_specs, eval_set, full_caption, load_eval_set, load_npz, neutral_spec, render, sample_spec,
                         save_npz, scene_rng, short_caption, specs_to_arrays, to_tensor)
from dcr_nb.encoder import create_encoder, embed_dim, get_tokenizer, image_embedding, save_encoder
from dcr_nb.evaluate import evaluate_d_ability
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.pretrain import PretrainClipConfig, load_clip, run_pretrain_clip
from dcr_nb.tasks import ClipPretrainTask
from dcr_nb.train import batch_indices, train
from dcr_nb.world import WORLD_STREAMS, attribute_probe, render_specs, world_specs
import yaml

VARIANT = re.compile(r"base|plain\d+|vit\d+x\d+|batch\d+|steps\d+|px\d+|patch\d+|rn\d+|twins\d+|ce\d+|supervised")
TWIN_STREAM = 20  # scene_rng stream of the twins' items (the world's streams: 0-3 scenes, 10-15 the report)

def parse_variant(name: str) -> dict:
    "{'scenes': 'base' or 'plainF', 'tower': (width, layers) or None, 'batch_size', 'steps': N or None, 'size': px, 'patch': px or None, 'resnet': W or None, 'twins': percent, 'ce': weight, None, or 'alone'}."
    parts = name.split("+")
    if bad := [q for q in parts if not VARIANT.fullmatch(q)]:
        raise SystemExit(f"unknown variant {name!r} (part {bad[0]!r}): parts base, plainF, vitWxL, batchN, stepsN, pxS, patchP, rnW, twinsF, ceW or supervised, joined by '+'")
    out = {"scenes": "base", "tower": None, "batch_size": None, "steps": None, "size": 32, "patch": None, "resnet": None, "twins": 0, "ce": None}
    for q in parts:
        if q.startswith("plain"): out["scenes"] = q
        elif q.startswith("vit"): out["tower"] = tuple(int(v) for v in q[3:].split("x"))
        elif q.startswith("batch"): out["batch_size"] = int(q[5:])
        elif q.startswith("steps"): out["steps"] = int(q[5:])
        elif q.startswith("px"): out["size"] = int(q[2:])
        elif q.startswith("patch"): out["patch"] = int(q[5:])
        elif q.startswith("rn"): out["resnet"] = int(q[2:])
        elif q.startswith("twins"): out["twins"] = int(q[5:])
        elif q.startswith("ce"): out["ce"] = int(q[2:]) / 10
        elif q == "supervised": out["ce"] = "alone"
    if out["tower"] and (out["tower"][0] % 32 or min(out["tower"]) < 1): raise SystemExit(f"{name!r}: the tower's width must be a positive multiple of 32 (heads of 32)")
    if 0 in (out["batch_size"], out["steps"]): raise SystemExit(f"{name!r}: batch size and steps must be positive")
    if out["size"] % 8 or out["size"] < 16: raise SystemExit(f"{name!r}: the scene size must be a multiple of 8, at least 16 (8x8 patches)")
    if out["patch"] is not None and (out["patch"] < 1 or out["size"] % out["patch"]): raise SystemExit(f"{name!r}: the patch size must divide the scene size ({out['size']} px)")
    if not 0 <= out["twins"] <= 100: raise SystemExit(f"{name!r}: twinsF takes a percentage of the batch, 0-100")
    if out["twins"] and out["scenes"] != "base": raise SystemExit(f"{name!r}: twinsF pairs the world's own scenes; it takes no plainF")
    if sum(q.startswith("ce") or q == "supervised" for q in parts) > 1: raise SystemExit(f"{name!r}: give one of ceW and supervised")
    if out["resnet"] is not None:
        if out["tower"] or out["patch"]: raise SystemExit(f"{name!r}: rnW is a convolutional tower; it takes no vitWxL or patchP")
        if out["resnet"] < 8 or out["resnet"] % 8 or out["size"] % 32: raise SystemExit(f"{name!r}: rnW needs a stem width W that is a positive multiple of 8 and a scene size that is a multiple of 32 (the ResNet downsamples 32x)")
    return out

def tower_model(width: int, layers: int, size: int = 32, base: str = "dcr-lit-vit", patch: int | None = None, resnet: bool = False) -> str:
    """Register (once per process) an open_clip config: `base`'s with an image tower of `width`, `layers`, `size` px in `patch` px
    patches (default: an 8x8 grid), or with `resnet` a ModifiedResNet of stem width `width` and `layers` blocks a stage; its name."""
    import open_clip
    from dcr_nb.encoder import MODEL_CONFIG_DIR, _resolve_text
    patch = patch or size // 8
    name = (f"{base}-rn{width}x{layers}-{size}px" if resnet else f"{base}-{width}x{layers}-{size}px" + (f"-patch{patch}" if patch != size // 8 else ""))
    if name not in open_clip.list_models():
        cfg = _resolve_text(json.loads((MODEL_CONFIG_DIR / f"{base}.json").read_text()))
        cfg["vision_cfg"] = ({"image_size": size, "layers": [layers] * 4, "width": width, "head_width": 32} if resnet else
                             {**cfg["vision_cfg"], "width": width, "layers": layers, "image_size": size, "patch_size": patch})
        d = Path(tempfile.mkdtemp(prefix="world_levers_")); (d / f"{name}.json").write_text(json.dumps(cfg)); open_clip.add_model_config(d)
    return name

def at_size(scenes: dict, images: np.ndarray, size: int) -> dict:
    "`scenes` with every picture rendered again from its attributes at `size` px (items, layouts and captions kept)."
    if scenes["images"].shape[1] == size: return scenes
    return scenes | {"images": np.stack([render(s, images, size) for s in arrays_to_specs(scenes)])}

def variant_scenes(name: str, src: dict, rates: dict, images: np.ndarray, seed: int = 0) -> dict:
    "The world's scenes as scene variant `name`: base or plainF (see the module's docstring)."
    if name == "base": return dict(src)
    if not name.startswith("plain") or not name[5:].isdigit(): raise SystemExit(f"unknown variant {name!r}: base or plainF (F in percent)")
    frac, rng, out = int(name[5:]) / 100, np.random.default_rng(seed), {k: np.array(v) for k, v in src.items()}
    specs = arrays_to_specs(out); size = out["images"].shape[1]
    for i in np.flatnonzero(rng.random(len(specs)) < frac):
        s = neutral_spec(specs[i].item, specs[i].label); specs[i] = s
        out["images"][i] = render(s, images, size); out["short"][i] = short_caption(s, rates, rng); out["full"][i] = full_caption(s)
    return out | specs_to_arrays(specs)

def twin_scenes(src: dict, images: np.ndarray, labels: np.ndarray, rates: dict, seed: int) -> dict:
    """Scene k's twin for every scene of `src` (the world's scenes, made by `render_scenes` with `seed`): the same spec with a
    uniformly drawn item of another class, captioned by the same draws of `short_caption` (template, mentions and order:
    only the class noun differs). Raises if `src`'s short captions are not those draws (other scenes, seed or rates)."""
    specs, twins, short, size = arrays_to_specs(src), [], [], src["images"].shape[1]
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    for k, s in enumerate(specs):
        rng = scene_rng(seed, 0, k); sample_spec(rng, labels); state = rng.bit_generator.state  # where the caption's draws start
        if short_caption(s, rates, rng) != src["short"][k]:
            raise ValueError(f"scene {k}: its short caption is not the world's rule's (seed {seed}); twins need the world's own scenes")
        pick = scene_rng(seed, TWIN_STREAM, k); label = (s.label + int(pick.integers(1, 10))) % 10
        t = dataclasses.replace(s, label=label, item=int(by_class[label][pick.integers(len(by_class[label]))]))
        rng.bit_generator.state = state; twins.append(t); short.append(short_caption(t, rates, rng))
    return {"images": np.stack([render(t, images, size) for t in twins]), **specs_to_arrays(twins),
            "short": np.array(short), "full": np.array([full_caption(t) for t in twins])}

def lever_batches(scenes: dict, twins: dict | None, batch_size: int, percent: int, seed: int):
    """A `get_batch(k)` like the world's (`scene_batches`, short captions; plus the classes, 'labels') whose first
    `m = round(batch_size * percent / 200)` scenes come with their twins: batch k holds the world's batch k's first
    batch_size - m scenes, then the twins of the first m."""
    m = round(batch_size * percent / 200) if twins is not None else 0
    def get_batch(k: int, rank: int = 0, world: int = 1) -> dict:
        idx = batch_indices(len(scenes["images"]), batch_size, seed, k, rank, world).numpy(); keep = idx[:len(idx) - m]
        part = lambda key: np.concatenate([scenes[key][keep]] + ([twins[key][idx[:m]]] if m else []))
        return {"images": to_tensor(part("images")), "captions": [str(c) for c in part("short")],
                "labels": torch.from_numpy(part("label")).long(), "k": k}
    return get_batch

class LeverTask(nn.Module):
    "LiT's loss (`ClipPretrainTask`) plus `ce` times a linear class head's cross-entropy on the image embedding; ce='alone': the cross-entropy only."
    def __init__(self, clip, tokenizer, ce):
        super().__init__(); self.lit, self.ce = ClipPretrainTask(clip, tokenizer), ce
        self.head = nn.Linear(embed_dim(clip), 10) if ce is not None else None
    def forward(self, batch) -> dict:
        if self.head is None: return self.lit(batch)
        emb = image_embedding(self.lit.clip, batch["images"])
        ce = F.cross_entropy(self.head(emb), batch["labels"].to(emb.device))
        if self.ce == "alone": return {"loss": ce, "ce": ce.detach()}
        txt = F.normalize(self.lit.text_features(list(batch["captions"]), emb.device), dim=-1)
        lit = self.lit.loss(F.normalize(emb, dim=-1), txt, self.lit.clip.logit_scale.exp())
        return {"loss": lit + self.ce * ce, "lit": lit.detach(), "ce": ce.detach()}

def pretrain_lever(cfg: PretrainClipConfig, twins: dict | None, percent: int, ce) -> tuple[Path, nn.Module | None]:
    """`run_pretrain_clip` on `lever_batches` (the world's scenes in cfg.data; `percent` of each batch twin pairs) with
    `LeverTask`'s loss; the checkpoint and the class head (None without ceW or supervised)."""
    get_batch = lever_batches(load_npz(Path(cfg.data) / "scenes.npz"), twins, cfg.batch_size, percent, cfg.seed)
    seed_everything(cfg.seed); clip = create_encoder(cfg.model, random_init=True)
    task = LeverTask(clip, get_tokenizer(cfg.model), ce)
    train(task, get_batch, cfg, Path(cfg.train_dir), fp_extra=[file_md5(Path(cfg.data) / "scenes.npz"), f"twins{percent}", f"ce{ce}"], desc="pretrain_clip (lever)")
    return save_encoder(clip, Path(cfg.out) / "clip.safetensors"), (task.head.eval() if task.head is not None else None)

@torch.no_grad()
def head_accuracy(clip, head: nn.Module, n: int, seed: int = 0) -> float:
    "The class head's own accuracy (%) on the test half of `attribute_probe`'s held-out scenes (the same scenes, same split)."
    images, labels = load_fashion_mnist("test")
    specs = world_specs(labels, n, seed, WORLD_STREAMS["probe"])[n - max(1, round(n * 0.5)):]
    x = to_tensor(render_specs(specs, images, clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size))
    pred = torch.cat([head(image_embedding(clip, x[i:i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return 100 * float((pred.numpy() == np.array([s.label for s in specs])).mean())

def measure(clip, data: Path, model: str, n_scene_probe: int) -> dict:
    tok = get_tokenizer(model)
    d, _ = evaluate_d_ability(clip, tok, load_eval_set(data / "eval_test.npz"), load_eval_set(data / "eval_train.npz"), progress=False)
    scenes = attribute_probe(clip, n=n_scene_probe, attributes=("label",))["label"]["accuracy"]
    return {"zero_shot": 100 * d["zero_shot_acc"], "linear_probe": 100 * d["linear_probe_acc"], "class_in_scenes": scenes}

SECTION = "levers"  # this study's settings in studies/params.yaml

def parser() -> argparse.ArgumentParser:
    "The command line; every default is the study's setting in studies/params.yaml."
    s = yaml.safe_load(root_path("studies/params.yaml").read_text())[SECTION]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=s["steps"]); p.add_argument("--variants", default=s["variants"])
    p.add_argument("--out", default=s["out"]); p.add_argument("--scene-probe", type=int, default=s["scene_probe"])
    p.add_argument("--work", default=s["work"], help="scene variants and checkpoints (none: a temporary folder, removed at the end)")
    return p

def main(argv=None) -> int:
    a = parser().parse_args(argv)
    variants = {name: parse_variant(name) for name in a.variants.split(",")}  # every name checked before any work
    params = yaml.safe_load(root_path("world/params.yaml").read_text()); prep = root_path(params["prepare"]["out"])
    if not (prep / "scenes.npz").is_file():
        print(f"missing {prep}/scenes.npz: run `dvc --cd world repro prepare` first (16 s)", file=sys.stderr); return 2
    rates = PrepareConfig.from_dict(params["prepare"]).rates()  # the caption mention rates (not p_neutral)
    src, (images, labels) = load_npz(prep / "scenes.npz"), load_fashion_mnist("train")
    out, pc = Path(a.out), params["pretrain_clip"]; out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="world_levers_"))
    source = file_md5(prep / "scenes.npz")  # what every scene variant and row in DIR was made from
    rows = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}  # earlier runs into DIR are kept
    if stale := [n for n, r in rows.items() if r.get("source_md5") != source]:
        print(f"{out}/results.json: dropping {', '.join(stale)}, measured on other world scenes than {prep}/scenes.npz", flush=True)
        rows = {n: r for n, r in rows.items() if n not in stale}
    if rows: print(f"{out}/results.json: keeping {', '.join(rows)} (a variant run again is replaced)", flush=True)
    for name, v in variants.items():
        data = work / f"scenes-{v['scenes']}-{v['size']}px"  # scene variants are shared, and remade when the world's scenes change
        if (data / "source.md5").is_file() and (data / "source.md5").read_text() != source: shutil.rmtree(data)
        data.mkdir(parents=True, exist_ok=True)
        if not (data / "scenes.npz").exists(): save_npz(data / "scenes.npz", **at_size(variant_scenes(v["scenes"], src, rates, images), images, v["size"]))
        for f, split, n in (("eval_test.npz", "test", None), ("eval_train.npz", "train", params["prepare"]["n_probe"])):
            if (data / f).exists(): continue
            if v["size"] == 32: (data / f).symlink_to(prep / f)
            else: save_npz(data / f, **eval_set(*load_fashion_mnist(split), v["size"], n))
        if v["twins"] and not (data / "twins.npz").exists():  # the world's scenes' twins, at this variant's size
            save_npz(data / "twins.npz", **at_size(twin_scenes(src, images, labels, rates, params["prepare"]["seed"]), images, v["size"]))
        (data / "source.md5").write_text(source)
        steps, folder = v["steps"] or a.steps, work / name
        cfg = PretrainClipConfig.from_dict({**{k: x for k, x in pc.items() if k != "report_n"},
                                            "model": tower_model(v["resnet"], 1, v["size"], resnet=True) if v["resnet"] else
                                                     tower_model(*(v["tower"] or (128, 4)), v["size"], patch=v["patch"]) if v["tower"] or v["size"] != 32 or v["patch"] else pc["model"],
                                            "batch_size": v["batch_size"] or pc["batch_size"], "steps": steps,
                                            "warmup_steps": min(pc["warmup_steps"], steps // 10), "ckpt_every": steps,
                                            "data": str(data), "out": str(folder), "train_dir": str(folder / "train")})
        t0 = time.perf_counter()
        path, head = (pretrain_lever(cfg, load_npz(data / "twins.npz") if v["twins"] else None, v["twins"], v["ce"]) if v["twins"] or v["ce"] is not None
                      else (run_pretrain_clip(cfg), None))
        took = time.perf_counter() - t0
        clip = load_clip(cfg.model, str(path), "world_levers")
        rows[name] = {**measure(clip, data, cfg.model, a.scene_probe), "source_md5": source,
                      **({"head_in_scenes": head_accuracy(clip, head, a.scene_probe)} if head is not None else {}), "steps": steps, "batch_size": cfg.batch_size,
                      "tower_params_M": sum(q.numel() for q in clip.visual.parameters()) / 1e6, "train_s": took}
        print(f"{name}: " + ", ".join(f"{k} {x:.1f}" for k, x in rows[name].items() if k != "source_md5"), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))  # kept as each variant ends: an interrupted run loses one
    table = [f"LiT pretraining (the world's: {pc['steps']} steps of batch {pc['batch_size']}, vit128x4), measured as the world report does (%); "
             "class head: a ceW or supervised variant's own head on the probe's test scenes:", "",
             "| variant | steps | batch | tower M params | zero-shot (neutral test) | linear probe | class in scenes | class head in scenes | training s |",
             "|---|---|---|---|---|---|---|---|---|"]
    cell = lambda r, k: f"{r[k]:.1f}" if k in r else "–"
    table += [f"| {n} | {r['steps']} | {r['batch_size']} | {r['tower_params_M']:.2f} | {r['zero_shot']:.1f} | {r['linear_probe']:.1f} | "
              f"{r['class_in_scenes']:.1f} | {cell(r, 'head_in_scenes')} | {r['train_s']:.0f} |" for n, r in rows.items()]
    print("\n".join(table)); (out / "table.md").write_text("\n".join(table) + "\n")
    if not a.work: shutil.rmtree(work)
    return 0

if __name__ == "__main__": sys.exit(main())
