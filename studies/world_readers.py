"""How much class can a reader see in the world's scenes at all? (issue 14: class in scenes 38.0 and samples 17.2, goals 60 and 50)

The world report reads the class two ways: a linear probe of the frozen CLIP features of held-out scenes (test
items; the first half trains it, the second is scored), and an MLP reader of the garment's crop in samples from
held-out full captions (`fit_reader`, trained on rendered scenes of train items). Both rows fall short. This script
measures what a reader with the right inductive bias gets from the same pixels, side by side:

- **ceiling**: a small CNN trained with labels on `--n-train` rendered scenes of *train* items, scored on the probe's
  held-out half (the scenes the report scores), beside the shipped CLIP's linear probe and an untrained tower's on the
  same split: the class a supervised image model of this size reads from these 32 px scenes;
- **readers** (`--samples N`, 0 skips it): the same CNN trained on the report reader's crops against the report's MLP,
  on true renders of `reader_test` scenes and on N samples of the shipped denoiser from held-out full captions
  (sampled the report's way): is the samples row held back by its reader or by the samples?

    dvc --cd studies repro readers                    the stage: settings from studies/params.yaml (`readers`)
    .venv/bin/python studies/world_readers.py [--n-train 12000] [--epochs 15] [--n-probe 4000] [--samples 256] [--no-ceiling] [--out DIR]

Prints a table; writes it (table.md) and the numbers (results.json) to DIR (the stage's: studies/outputs/readers).
"""
import argparse, json, sys, time
from pathlib import Path
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F, yaml
from dcr_nb.core import root_path

def cnn(in_channels: int, n_classes: int = 10) -> nn.Module:
    "Four 3x3 convolutions (32-64-128-128) with two poolings, global average pooling and a linear head: 0.24 M parameters."
    block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*block(in_channels, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), nn.MaxPool2d(2),
                         *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, n_classes))

def fit(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0, batch_size: int = 128, lr: float = 2e-3) -> nn.Module:
    "A `cnn` trained on (N, C, H, W) floats and (N,) labels with AdamW and a one-cycle schedule."
    torch.manual_seed(seed); m = cnn(x.shape[1]); opt = torch.optim.AdamW(m.parameters(), lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * -(-len(x) // batch_size))
    for _ in range(epochs):
        m.train()
        for b in torch.randperm(len(x)).split(batch_size):
            loss = F.cross_entropy(m(x[b]), y[b]); opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    return m.eval()

@torch.no_grad()
def predict(m: nn.Module, x: torch.Tensor) -> np.ndarray: return torch.cat([m(b).argmax(1) for b in x.split(512)]).numpy()

def scenes(images: np.ndarray) -> torch.Tensor: return torch.from_numpy(images).movedim(-1, 1).float() / 255  # (N, 3, H, W)

def crops(images: np.ndarray, specs) -> tuple[torch.Tensor, np.ndarray]:
    "The report reader's inputs: the first item's grey crop (N, 1, 16, 16) as a tensor and flat (N, 256) for the MLP."
    from dcr_nb.world import item_crop
    flat = np.stack([item_crop(im, s)[0] for im, s in zip(images, specs)]).astype(np.float32)
    return torch.from_numpy(flat).view(-1, 1, 16, 16), flat

SECTION = "readers"  # this study's settings in studies/params.yaml

def parser() -> argparse.ArgumentParser:
    "The command line; every default is the study's setting in studies/params.yaml."
    s = yaml.safe_load(root_path("studies/params.yaml").read_text())[SECTION]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=s["n_train"]); p.add_argument("--epochs", type=int, default=s["epochs"])
    p.add_argument("--n-probe", type=int, default=s["n_probe"], help="held-out scenes of the probe (none: the world report's)")
    p.add_argument("--samples", type=int, default=s["samples"]); p.add_argument("--out", default=s["out"])
    p.add_argument("--no-ceiling", action="store_true", default=s["no_ceiling"], help="skip the supervised scene CNN and the linear probes (only the samples' readers)")
    return p

def main(argv=None) -> int:
    a = parser().parse_args(argv)
    for flag, v, lo in (("--n-train", a.n_train, 10), ("--epochs", a.epochs, 1), ("--samples", a.samples, 0), ("--n-probe", a.n_probe, 2)):
        if v is not None and v < lo: raise SystemExit(f"{flag} {v}: must be >= {lo}")
    params = yaml.safe_load(root_path("world/params.yaml").read_text()); rep, model = params["report"], params["pretrain_clip"]["model"]
    n_probe, seed, weights = a.n_probe if a.n_probe is not None else rep["n_probe"], rep["seed"], root_path("world/weights")
    if not (weights / "clip.safetensors").is_file():
        print(f"missing {weights}/clip.safetensors: the shipped world (git tracks it; `make world` rebuilds it)", file=sys.stderr); return 2
    from dcr_nb.data import full_caption
    from dcr_nb.encoder import create_encoder
    from dcr_nb.fetch import load_fashion_mnist
    from dcr_nb.pretrain import load_standin_diffusion, ddim_sample as sample
    from dcr_nb.world import WORLD_STREAMS, attribute_probe, fit_reader, render_specs, world_specs
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    out, rows = Path(a.out), {}; out.mkdir(parents=True, exist_ok=True)
    def keep(name, **r):
        rows[name] = r; print(f"{name}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
    shipped = create_encoder(model, pretrained=str(weights / "clip.safetensors")).eval()
    if not a.no_ceiling:  # the ceiling: supervised CNN on whole scenes, scored on the probe's held-out half
        specs = world_specs(train[1], a.n_train, seed, WORLD_STREAMS["reader"]); t0 = time.perf_counter()
        m = fit(scenes(render_specs(specs, train[0], 32)), torch.tensor([s.label for s in specs]), a.epochs, seed)
        fit_s = time.perf_counter() - t0
        probe = world_specs(test[1], n_probe, seed, WORLD_STREAMS["probe"]); k = n_probe - max(1, round(n_probe * 0.5))
        held = probe[k:]; y = np.array([s.label for s in held])
        keep("scene CNN (supervised)", class_pct=100 * float((predict(m, scenes(render_specs(held, test[0], 32))) == y).mean()),
             n_test=len(held), fit_s=fit_s)
        torch.manual_seed(seed)
        for name, clip in (("shipped CLIP, linear probe", shipped), ("untrained tower, linear probe", create_encoder(model, random_init=True).eval())):
            keep(name, class_pct=attribute_probe(clip, n_probe, seed, attributes=("label",), data=test)["label"]["accuracy"], n_test=len(held))
    if a.samples:  # the samples row's reader: CNN on the report reader's crops against its MLP
        specs = world_specs(train[1], rep["n_reader"], seed, WORLD_STREAMS["reader"]); t0 = time.perf_counter()
        crop_cnn = fit(crops(render_specs(specs, train[0], 32), specs)[0], torch.tensor([s.label for s in specs]), a.epochs, seed)
        mlp = fit_reader(n=rep["n_reader"], seed=seed); fit_s = time.perf_counter() - t0
        d = load_standin_diffusion(model, shipped, str(weights), "make world")
        spec_s = world_specs(test[1], a.samples, seed, WORLD_STREAMS["samples"]); caps = [full_caption(s) for s in spec_s]
        t0 = time.perf_counter()
        with torch.no_grad(): gen = torch.cat([sample(d, d.text(caps[b:b + 64]), rep["sample_steps"], rep["guidance"], seed + b, rep["eta"])
                                              for b in range(0, a.samples, 64)])  # as `sample_recognition` draws them
        gen = (gen.movedim(1, -1).cpu().numpy() * 255).round().astype(np.uint8); sample_s = time.perf_counter() - t0
        rt = world_specs(test[1], 2000, seed, WORLD_STREAMS["reader_test"])
        for name, ims, ss in (("true renders (reader_test)", render_specs(rt, test[0], 32), rt), (f"samples ({rep['sample_steps']} DDIM steps, eta {rep['eta']:g})", gen, spec_s)):
            (xc, xf), yy = crops(ims, ss), np.array([s.label for s in ss])
            keep(name, cnn_reader_pct=100 * float((predict(crop_cnn, xc) == yy).mean()),
                 mlp_reader_pct=100 * float((mlp.predict(xf) == yy).mean()), n=len(ss), fit_s=fit_s, sample_s=sample_s if "samples" in name else 0.0)
    table = ["| measured | class % | n |", "|---|---|---|"]
    table += [f"| {n} | " + (f"{r['class_pct']:.1f}" if "class_pct" in r else f"CNN reader {r['cnn_reader_pct']:.1f}, MLP reader {r['mlp_reader_pct']:.1f}")
              + f" | {r.get('n_test', r.get('n'))} |" for n, r in rows.items()]
    print("\n".join(table)); (out / "table.md").write_text("\n".join(table) + "\n")
    return 0

if __name__ == "__main__": sys.exit(main())
