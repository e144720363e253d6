"""Which change to the world's denoiser lets the released condition slot carry the blind attributes? (issue 46, item 2: P1)

In the shipped world the slot (one vector broadcast-added to the empty prompt's states, as released) is worth nothing for
orientation: an oracle projector fed the true attributes lowers the held-out loss by -0.0002 [-0.0005, +0.0001]
(studies/outputs/premises). The shipped denoiser was pretrained on caption token states only, and its cross-attention sits
at 8x8 only, where the slot acts as one bias per layer. This study fine-tunes the shipped denoiser side by side, at one
budget, in variants that pull those two levers apart, and measures P1 on each with the premises study's own instrument
(`dcr_nb.premises.slot_headroom`, same scenes, settings and thresholds):

  captions   the shipped denoiser trained on as it was pretrained (full captions' token states, 10% empty): the control
  slotP      P percent of the conditions in the slot's form: the empty prompt's states plus the caption's LiT text
             embedding in every slot (the space the stand-in CLIP's image embedding lives in); the rest as `captions`
  xattn16    cross-attention added at 16x16 (down and up), its output projection zero-initialised, so the network starts as
             the shipped one (checked); with `+`: `xattn16+slot50`

    dvc --cd studies repro slot                       the stage: settings from studies/params.yaml (`slot`)
    .venv/bin/python studies/world_slot.py [--variants slot50] [--steps N] [...] [--out DIR]

A fine-tuned variant is kept in `work` with its settings, so an interrupted run resumes at the next variant. Writes
table.md and results.json to DIR (the stage's: studies/outputs/slot).
"""
import argparse, copy, hashlib, json, sys
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm
from dcr_nb.core import root_path
from dcr_nb.data import full_caption, to_tensor
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.losses import diffusion_target
from dcr_nb.premises import PREMISE_STREAMS, noise_draws, scene_set, slot_headroom, slot_losses
from dcr_nb.pretrain import load_clip, load_standin_diffusion
from dcr_nb.encoder import get_tokenizer

SECTION = "slot"

def parser() -> argparse.ArgumentParser:
    d = yaml.safe_load(root_path("studies/params.yaml").read_text())[SECTION]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in d.items(): p.add_argument("--" + k.replace("_", "-"), dest=k, type=type(v) if v is not None else str, default=v)
    return p

def parse_variant(name: str) -> dict:
    "'xattn16+slot50' -> {'xattn16': True, 'slot': 0.5}; 'captions' -> the control."
    out = {"xattn16": False, "slot": 0.0}
    for part in name.split("+"):
        if part == "captions": continue
        elif part == "xattn16": out["xattn16"] = True
        elif part.startswith("slot") and part[4:].isdigit() and 0 < int(part[4:]) <= 100: out["slot"] = int(part[4:]) / 100
        else: raise SystemExit(f"unknown variant part {part!r} in {name!r}: use captions, slotP (P in 1-100), xattn16, joined by '+'")
    return out

def with_xattn16(unet):
    "The shipped UNet with cross-attention blocks at 16x16 too, their output projections zero: the same function at the start."
    from diffusers import UNet2DConditionModel
    cfg = dict(unet.config); down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if down[1] == "CrossAttnDownBlock2D": raise ValueError("this UNet already has cross-attention at 16x16")
    down[1], up[1] = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
    new = UNet2DConditionModel.from_config({**cfg, "down_block_types": tuple(down), "up_block_types": tuple(up)})
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not (k.startswith("down_blocks.1.attentions") or k.startswith("up_blocks.1.attentions")) for k in missing):
        raise RuntimeError(f"state dicts do not line up: unexpected {unexpected[:3]}, missing {missing[:3]}")
    for blk in (new.down_blocks[1], new.up_blocks[1]):
        for a in blk.attentions: torch.nn.init.zeros_(a.proj_out.weight); torch.nn.init.zeros_(a.proj_out.bias)
    return new

class Conditions:
    "Caption -> the denoiser's condition: token states (as pretrained) or the slot's form (empty prompt + LiT text embedding)."
    def __init__(self, d, clip, model: str):
        self.d, self.clip, self.tok, self.memo = d, clip, get_tokenizer(model), {}
    @torch.no_grad()
    def _encode(self, caps):
        new = [c for c in dict.fromkeys(caps) if c not in self.memo]
        if new:
            states, emb = self.d.text.encode(new), self.clip.encode_text(self.tok(new))
            self.memo.update({c: (s, e) for c, s, e in zip(new, states, emb)})
    def tokens(self, caps): self._encode(caps); return torch.stack([self.memo[c][0] for c in caps])
    def slot(self, caps): self._encode(caps); return self.d.empty + torch.stack([self.memo[c][1] for c in caps])[:, None]

def fine_tune(d, conds, images, captions, v: dict, a, held) -> dict:
    "Train `d.unet` in place for `a.steps` steps on the scenes; held-out losses before and after, with captions and in the slot's form."
    ho_x, ho_caps = held; draws = noise_draws(d.codec.encode(ho_x), d.scheduler.config.num_train_timesteps, 2, 99)
    def held_out():
        d.unet.eval()
        r = {"captions": float(slot_losses(d, lambda i: conds.tokens([ho_caps[k] for k in i]), ho_x, draws).mean()),
             "slot": float(slot_losses(d, lambda i: conds.slot([ho_caps[k] for k in i]), ho_x, draws).mean()),
             "empty": float(slot_losses(d, lambda i: d.empty.expand(len(i), -1, -1), ho_x, draws).mean())}
        d.unet.train(); return r
    before = held_out()
    d.unet.requires_grad_(True).train()
    opt = torch.optim.AdamW(d.unet.parameters(), lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup_steps))
    g = torch.Generator().manual_seed(a.seed); t_max = d.scheduler.config.num_train_timesteps
    bar = tqdm(range(a.steps), desc="fine-tune", leave=False)
    for _ in bar:
        i = torch.randint(0, len(images), (a.batch_size,), generator=g); caps = [captions[k] for k in i.tolist()]
        u = torch.rand(a.batch_size, generator=g); drop, slot = u < a.cond_drop, (u >= a.cond_drop) & (u < a.cond_drop + v["slot"] * (1 - a.cond_drop))
        cond = conds.tokens(["" if dr else c for c, dr in zip(caps, drop.tolist())])
        if slot.any(): cond[slot] = conds.slot([c for c, s in zip(caps, slot.tolist()) if s]).to(cond)
        x0 = d.codec.encode(images[i]); noise = torch.randn(x0.shape, generator=g); t = torch.randint(0, t_max, (a.batch_size,), generator=g)
        loss = F.mse_loss(d.unet(d.scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample.float(),
                          diffusion_target(d.scheduler, x0, noise, t).float())
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(d.unet.parameters(), 1.0); opt.step(); sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    d.unet.requires_grad_(False).eval()
    return {"before": before, "after": held_out()}

def table(res: dict, blind, premises: dict | None) -> str:
    f = lambda v, ci: f"{v:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
    lines = [f"P1 (what an attribute is worth through the released slot: held-out loss without it minus with all, 95% interval) on "
             f"fine-tuned variants of the shipped denoiser, {res['steps']} steps each, batch {res['batch_size']}, lr {res['lr']}:", "",
             "| variant | held-out loss, captions / slot form / empty (after) | oracle: all / none | " + " | ".join(blind) + " | P1 met for |",
             "|---|---|---|" + "---|" * len(blind) + "---|"]
    if premises:
        p1 = premises["P1"]; met = [a for a in blind if p1["attributes"][a]["ci95"][0] > 0]
        lines.append(f"| shipped (no fine-tune; studies/outputs/premises) | | {p1['loss_all']:.4f} / {p1['loss_none']:.4f} | " +
                     " | ".join(f(p1["attributes"][a]["worth"], p1["attributes"][a]["ci95"]) for a in blind) + f" | {', '.join(met) or 'none'} |")
    for name, r in res["variants"].items():
        h, p1 = r["fine_tune"]["after"], r["P1"]; met = [a for a in blind if p1["attributes"][a]["ci95"][0] > 0]
        lines.append(f"| {name} | {h['captions']:.4f} / {h['slot']:.4f} / {h['empty']:.4f} | {p1['loss_all']:.4f} / {p1['loss_none']:.4f} | " +
                     " | ".join(f(p1["attributes"][a]["worth"], p1["attributes"][a]["ci95"]) for a in blind) + f" | {', '.join(met) or 'none'} |")
    return "\n".join(lines)

def main(argv=None) -> int:
    a = parser().parse_args(argv)
    variants = {v: parse_variant(v) for v in a.variants.split(",")}
    params = yaml.safe_load(root_path("world/params.yaml").read_text()); model = params["pretrain_clip"]["model"]
    blind = params["report"]["blind"].split(",")
    clip = load_clip(model, "world/weights/clip.safetensors", "the shipped world (git tracks it; `make world` rebuilds it)")
    shipped = load_standin_diffusion(model, clip, "world/weights")
    ds = np.load(root_path(params["prepare"]["out"]) / "scenes.npz", allow_pickle=True)
    n = params["pretrain_denoiser"]["n_scenes"]
    images, captions = to_tensor(ds["images"][:n]), [str(c) for c in ds["full"][:n]]
    tr, ytr = load_fashion_mnist("train"); te, yte = load_fashion_mnist("test")
    train, held = scene_set(tr, ytr, a.n_train, PREMISE_STREAMS["train"]), scene_set(te, yte, a.n_held, PREMISE_STREAMS["held_out"])
    held_caps = [full_caption(s) for s in held[0]]
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(a, k) for k in ("steps", "batch_size", "lr", "warmup_steps", "cond_drop", "seed", "n_train", "n_held",
                                           "oracle_steps", "oracle_batch", "every", "draws")}
    res = {**settings, "variants": {}}
    for name, v in variants.items():
        key = hashlib.sha256(json.dumps([name, settings, (root_path("world/weights/unet/diffusion_pytorch_model.safetensors")).stat().st_size],
                                        sort_keys=True).encode()).hexdigest()[:12]
        done = work / f"{name}-{key}.json"
        if done.exists(): res["variants"][name] = json.loads(done.read_text()); print(f"{name}: resumed from {done}", flush=True); continue
        d = copy.copy(shipped); d.unet = copy.deepcopy(shipped.unet)
        if v["xattn16"]:
            d.unet = with_xattn16(d.unet).eval()
            x = d.codec.encode(held[1][:4]); t = torch.tensor([100, 300, 500, 700]); c = d.empty.expand(4, -1, -1)
            with torch.no_grad(): gap = (d.denoise(x, t, c) - shipped.denoise(x, t, c)).abs().max().item()
            if gap > 1e-5: raise RuntimeError(f"xattn16 does not start as the shipped denoiser (max difference {gap:.1e})")
        torch.manual_seed(a.seed)
        r = {"fine_tune": fine_tune(d, Conditions(d, clip, model), images, captions, v, a, (held[1], held_caps))}
        print(f"{name}: held-out {r['fine_tune']}", flush=True)
        r["P1"] = slot_headroom(d, train, held, attrs=blind, steps=a.oracle_steps, batch_size=a.oracle_batch, every=a.every, draws=a.draws)
        print(f"{name}: P1 " + ", ".join(f"{k} {x['worth']:+.4f} {x['ci95']}" for k, x in r["P1"]["attributes"].items()), flush=True)
        done.write_text(json.dumps(r, default=float)); res["variants"][name] = r
    prem = root_path("studies/outputs/premises/results.json")
    text = table(res, blind, json.loads(prem.read_text()) if prem.exists() else None); print(text)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n"); (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    return 0

if __name__ == "__main__": sys.exit(main())
