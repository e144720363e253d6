"""Where does the shipped CLIP lose the class in held-out scenes? (issue 14: class probe 37.1% against >= 60)

The world report's row fits a linear probe on the frozen image features of 2,000 held-out scenes (Fashion-MNIST test
items) and scores it on 2,000 more. This script asks the questions that decide which lever could move it, with the
shipped CLIP (world/weights/clip.safetensors) and the report's own scenes and probe (`linear_probe`):

  by attribute   the report's probe, its accuracy on the test scenes split by each attribute's value: is the class
                 lost in small, covered, several or turned items only, or everywhere?
  text side      the same probe on the CLIP's text features of the same scenes' full captions: can the space the
                 image tower is trained to meet tell the classes apart at all?
  items          the probe on scenes of *train* items (new layouts of items the tower has seen) and on the world's
                 training scenes themselves (not the neutral ones): is the tower overfitting its items or scenes?
  probe size     the probe fitted on 2,000 / 8,000 / 18,000 scenes of train items, scored on 2,000 more: how much of
                 the gap is the report's small probe training set?
  probe C        the report's scenes, the probe's inverse regularisation C swept (test and fit accuracy) and C picked by
                 5-fold cross-validation on the fitting half: is the protocol's fixed C = 1 what holds the row down?
  MLLM tokens    what LLaVA-1.5 reads (the residual stream after the second-to-last block: its patch tokens, here also
                 their mean and the class token), probed the same way, for the shipped CLIP and for an untrained tower
                 of the same shape: does the class live in the tokens rather than in the pooled embedding?

    dvc --cd studies repro class                      the stage: settings from studies/params.yaml (`class`)
    .venv/bin/python studies/world_class.py [--n N] [--out DIR]      the same, a setting overridden

Needs the world's prepared scenes for the last part of "items" (`dvc --cd world repro prepare`, 16 s). About three
minutes on 2 CPU cores. Prints the tables; writes them (table.md) and the numbers (results.json) to DIR (the stage's:
studies/outputs/class).
"""
import argparse, json, sys
from pathlib import Path
import numpy as np
from dcr_nb.core import root_path
from dcr_nb.data import arrays_to_specs, full_caption, load_npz
from dcr_nb.encoder import create_encoder, get_tokenizer
from dcr_nb.evaluate import _l2, encode_images, encode_texts, evaluating, linear_probe, model_pixels, probe_model, probe_predictions
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.world import BENCH_ATTRS, WORLD_STREAMS, render_specs, world_specs
import torch
import yaml

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)

def probe_c(train_x, train_y, test_x, test_y, grid=C_GRID, folds: int = 5) -> dict:
    "The report's probe at each C of `grid`: [test %, fit %]; and the C 5-fold cross-validation on the fitting half picks, with its test %."
    from sklearn.model_selection import cross_val_score
    xa, xb, ya, yb = _l2(train_x), _l2(test_x), np.asarray(train_y), np.asarray(test_y)
    swept = {c: [100 * m.score(xb, yb), 100 * m.score(xa, ya)] for c in grid for m in [probe_model(c).fit(xa, ya)]}
    cv = {c: float(cross_val_score(probe_model(c), xa, ya, cv=folds).mean()) for c in grid}
    best = max(grid, key=lambda c: (cv[c], -c))  # ties: the stronger regularisation
    return {"swept": swept, "cv_C": best, "cv_test_%": swept[best][0]}

def block_tokens(clip, images, block: int = -2, batch_size: int = 256) -> torch.Tensor:
    "The image tower's residual stream after transformer block `block` (-2: what LLaVA-1.5 reads), (N, 1 + patches, width)."
    v, out, seen = clip.visual, [], []
    hook = v.transformer.resblocks[block].register_forward_hook(lambda mod, i, o: seen.append(o))
    try:
        with evaluating(clip), torch.no_grad():
            for s in range(0, len(images), batch_size):
                seen.clear(); v(model_pixels(clip, images[s:s + batch_size]))
                out.append((seen[0] if v.transformer.batch_first else seen[0].transpose(0, 1)).float())
    finally: hook.remove()
    return torch.cat(out)

def token_readings(clip, images, y, k: int) -> dict[str, float]:
    "The report's probe (first k scenes fit it, the rest score it; %) on block -2's class token, mean patch token and all patch tokens."
    t = block_tokens(clip, images); n = len(t)
    views = {"class token": t[:, 0], "mean of patch tokens": t[:, 1:].mean(1), "all patch tokens": t[:, 1:].reshape(n, -1)}
    return {name: 100 * linear_probe(f[:k], y[:k], f[k:], y[k:]) for name, f in views.items()}

def by_value(ok: np.ndarray, specs, attrs) -> dict[str, dict[int, list]]:
    "Per attribute and value: [accuracy %, number of test scenes]."
    out = {}
    for a in attrs:
        v = np.array([getattr(s, a) for s in specs])
        out[a] = {int(u): [100 * float(ok[v == u].mean()), int((v == u).sum())] for u in np.unique(v)}
    return out

SECTION = "class"  # this study's settings in studies/params.yaml

def parser() -> argparse.ArgumentParser:
    "The command line; every default is the study's setting in studies/params.yaml."
    s = yaml.safe_load(root_path("studies/params.yaml").read_text())[SECTION]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=s["out"]); p.add_argument("--n", type=int, default=s["n"], help="held-out scenes, half to fit the probe")
    return p

def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.n < 20: raise SystemExit(f"--n {a.n}: at least 20 held-out scenes (half fit the probe, half score it)")
    params = yaml.safe_load(root_path("world/params.yaml").read_text()); model = params["pretrain_clip"]["model"]
    weights, prep = root_path("world/weights/clip.safetensors"), root_path(params["prepare"]["out"]) / "scenes.npz"
    for f, how in ((weights, "the shipped world (git tracks it; `make world` rebuilds it)"), (prep, "`dvc --cd world repro prepare` (16 s)")):
        if not f.is_file(): print(f"missing {f}: {how}", file=sys.stderr); return 2
    clip, tok = create_encoder(model, pretrained=str(weights)).eval(), get_tokenizer(model)
    n, k, res = a.n, a.n // 2, {}
    feats = lambda specs, images: encode_images(clip, render_specs(specs, images, 32), 256, progress=False)
    te_images, te_labels = load_fashion_mnist("test")
    specs = world_specs(te_labels, n, 0, WORLD_STREAMS["probe"]); y = np.array([s.label for s in specs])
    scenes_te = render_specs(specs, te_images, 32); x = encode_images(clip, scenes_te, 256, progress=False)
    res["report_probe_%"] = 100 * linear_probe(x[:k], y[:k], x[k:], y[k:])
    ok = probe_predictions(x[:k], y[:k], x[k:]) == y[k:]  # the same probe, per scene
    res["by_value"] = by_value(ok, specs[k:], ("label",) + BENCH_ATTRS)
    t = encode_texts(clip, tok, [full_caption(s) for s in specs], 256)
    res["text_side_%"] = 100 * linear_probe(t[:k], y[:k], t[k:], y[k:])
    tr_images, tr_labels = load_fashion_mnist("train")
    s2 = world_specs(tr_labels, n, 0, WORLD_STREAMS["probe"]); y2 = np.array([s.label for s in s2]); x2 = feats(s2, tr_images)
    res["train_items_%"] = 100 * linear_probe(x2[:k], y2[:k], x2[k:], y2[k:])
    scenes = load_npz(prep); sp = arrays_to_specs(scenes)
    idx = [i for i, s in enumerate(sp) if s.position != 4][:n]  # position 4 (centre) only in the neutral renders
    x3, y3 = encode_images(clip, scenes["images"][idx], 256, progress=False), np.array([sp[i].label for i in idx])
    res["training_scenes_%"] = 100 * linear_probe(x3[:k], y3[:k], x3[k:], y3[k:])
    big = world_specs(tr_labels, 20000, 1, WORLD_STREAMS["probe"]); yb = np.array([s.label for s in big]); xb = feats(big, tr_images)
    res["probe_size_%"] = {m: 100 * linear_probe(xb[:m], yb[:m], xb[-2000:], yb[-2000:]) for m in (2000, 8000, 18000)}
    res["probe_C"] = probe_c(x[:k], y[:k], x[k:], y[k:])
    torch.manual_seed(0); untrained = create_encoder(model, random_init=True).eval()
    res["tokens_%"] = {"shipped": token_readings(clip, scenes_te, y, k), "untrained": token_readings(untrained, scenes_te, y, k)}
    u = encode_images(untrained, scenes_te, 256, progress=False)
    res["tokens_%"]["shipped"]["pooled embedding (the report's)"] = res["report_probe_%"]
    res["tokens_%"]["untrained"]["pooled embedding (the report's)"] = 100 * linear_probe(u[:k], y[:k], u[k:], y[k:])
    lines = [f"The shipped CLIP's class in held-out scenes (linear probe, {k:,} scenes fit it, {n - k:,} score it; %):", "",
             "| what | class % |", "|---|---|",
             f"| the report's probe (test items) | {res['report_probe_%']:.1f} |",
             f"| the same probe on the CLIP's text features of the scenes' full captions | {res['text_side_%']:.1f} |",
             f"| scenes of train items (new layouts of seen items) | {res['train_items_%']:.1f} |",
             f"| the world's training scenes themselves (not the neutral ones) | {res['training_scenes_%']:.1f} |"]
    lines += [f"| scenes of train items, probe fitted on {m:,} (scored on 2,000 others) | {v:.1f} |" for m, v in res["probe_size_%"].items()]
    lines += ["", f"The report's probe by attribute value (accuracy % on the {n - k:,} test scenes, how many):", ""]
    lines += [f"- {attr}: " + ", ".join(f"{v}: {acc:.1f} ({c})" for v, (acc, c) in vals.items()) for attr, vals in res["by_value"].items() if attr != "text"]
    text = res["by_value"]["text"]; accs = [acc for v, (acc, _) in text.items() if v]
    lines += [f"- text: none {text[0][0]:.1f} ({text[0][1]}), each of {len(accs)} glyphs {min(accs):.1f}-{max(accs):.1f}"]
    pc = res["probe_C"]
    lines += ["", "The report's probe with other regularisation (C; the protocol's is 1.0): test % / fit %", ""]
    lines += ["| C | " + " | ".join(f"{c:g}" for c in pc["swept"]) + " |", "|---|" + "---|" * len(pc["swept"]),
              "| test | " + " | ".join(f"{v[0]:.1f}" for v in pc["swept"].values()) + " |",
              "| fit | " + " | ".join(f"{v[1]:.1f}" for v in pc["swept"].values()) + " |", "",
              f"C picked by 5-fold cross-validation on the fitting half: {pc['cv_C']:g}, test {pc['cv_test_%']:.1f}%", "",
              "What LLaVA-1.5 reads (block -2's tokens), probed as the report probes (class %):", "",
              "| features | shipped CLIP | untrained tower |", "|---|---|---|"]
    lines += [f"| {name} | {v:.1f} | {res['tokens_%']['untrained'][name]:.1f} |" for name, v in res["tokens_%"]["shipped"].items()]
    print("\n".join(lines)); out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n"); (out / "results.json").write_text(json.dumps(res, indent=1))
    return 0

if __name__ == "__main__": sys.exit(main())
