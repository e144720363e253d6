"""Which words let the world's frozen text side tell a benchmark pair apart? (issue 14: the position oracle, 67% against >= 80)

The world report's text-only oracle replaces every benchmark image by the text feature of its scene's full caption
and scores the statement pairs by the MMVP rule: the ceiling the text side allows. This script rephrases one
attribute's words (`dcr_nb.data.WORDS`) and measures the oracle again with the shipped CLIP's text side (MiniLM and
its trained projection), on the world's benchmark pairs, every category (each full caption carries every phrase):

    dvc --cd studies repro wording                    the stage: settings from studies/params.yaml (`wording`)
    .venv/bin/python studies/world_wording.py [--words 'position=to the left|to the right|above|below'] [--pairs 100] [--out DIR]

`--words ATTR=P0|P1|...` (repeatable; added to the variants in studies/params.yaml) is one variant: the phrases for the attribute's values in index order (for
position, the four a training scene can take; the evaluation-only centre keeps its words). The world's current words
are always measured first. Nothing is written to the library: the words are swapped for the measurement only.

The same words also condition the denoiser, through MiniLM's per-token states (all 40 positions, as its
cross-attention reads them). So for each wording the script also measures the conditioning signal of each attribute:
the relative change of those states when only that attribute of a full caption changes (mean over token positions
of the per-token L2 change, over the mean per-token norm; averaged over --scenes random scenes). A wording that
weakens an attribute's signal gives the denoiser less to learn it from.
Prints two tables; writes them (table.md) and the numbers (results.json) to --out (the stage's: studies/outputs/wording).
"""
import argparse, contextlib, dataclasses, json, sys, time
from pathlib import Path
import numpy as np, torch, yaml
import dcr_nb.data as data, dcr_nb.world as world
from dcr_nb.core import root_path

def parse_words(arg: str) -> tuple[str, tuple[str, ...]]:
    "(attribute, phrases) of `ATTR=P0|P1|...`, checked against the attribute's values."
    attr, sep, rest = arg.partition("=")
    if not sep or attr not in data.WORDS:
        raise SystemExit(f"--words {arg!r}: ATTR=P0|P1|... with ATTR one of {', '.join(data.WORDS)}")
    phrases, n = tuple(p.strip() for p in rest.split("|")), data.N_VALUES[attr]
    if len(phrases) != n or not all(phrases) or len(set(phrases)) != n:
        raise SystemExit(f"--words {arg!r}: {attr} needs {n} distinct, non-empty phrases separated by '|', got {len(phrases)}")
    return attr, phrases + data.WORDS[attr][n:]  # position's centre (evaluation only) keeps its words

@contextlib.contextmanager
def words(attr: str, phrases: tuple[str, ...]):
    "Use `phrases` for `attr` in every caption and statement inside the block."
    old = data.WORDS[attr]; data.WORDS[attr] = phrases
    try: yield
    finally: data.WORDS[attr] = old

SIGNAL_ATTRS = ("position", "orientation", "state", "viewpoint", "count", "color", "size")

@torch.no_grad()
def conditioning_signal(text, specs, attrs=SIGNAL_ATTRS, seed: int = 0) -> dict[str, float]:
    "Per attribute: the relative change of `text`'s per-token states (a `TextEncoder`) when only that attribute changes."
    own, rng, out = text.encode([data.full_caption(s) for s in specs]), np.random.default_rng(seed), {}
    for attr in attrs:
        other = [dataclasses.replace(s, **{attr: world.other_value(s, attr, rng)}) for s in specs]
        diff = (text.encode([data.full_caption(s) for s in other]) - own).norm(dim=-1).mean(1)  # (n,) mean over positions
        out[attr] = float((diff / own.norm(dim=-1).mean(1)).mean())
    return out

SECTION = "wording"  # this study's settings in studies/params.yaml

def parser() -> argparse.ArgumentParser:
    "The command line; every default is the study's setting in studies/params.yaml."
    s = yaml.safe_load(root_path("studies/params.yaml").read_text())[SECTION]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--words", action="append", default=list(s["words"]), help="ATTR=P0|P1|... (repeatable; added to the settings' variants)")
    p.add_argument("--pairs", type=int, default=s["pairs"]); p.add_argument("--out", default=s["out"])
    p.add_argument("--scenes", type=int, default=s["scenes"], help="random scenes for the conditioning signal")
    return p

def main(argv=None) -> int:
    a = parser().parse_args(argv)
    variants = [parse_words(w) for w in a.words]  # every variant checked before any work
    if a.pairs < 1: raise SystemExit(f"--pairs {a.pairs}: pairs per category must be >= 1")
    if a.scenes < 1: raise SystemExit(f"--scenes {a.scenes}: scenes for the conditioning signal must be >= 1")
    params = yaml.safe_load(root_path("world/params.yaml").read_text())
    weights = root_path("world/weights/clip.safetensors")
    if not weights.is_file():
        print(f"missing {weights}: the shipped world's CLIP (git tracks it; `make world` rebuilds it)", file=sys.stderr); return 2
    from dcr_nb.encoder import create_encoder, get_tokenizer
    from dcr_nb.world import benchmark_pairs, text_oracle
    from dcr_nb.conditioning import openclip_text
    model = params["pretrain_clip"]["model"]
    clip, tok = create_encoder(model, pretrained=str(weights)).eval(), get_tokenizer(model)
    pairs = benchmark_pairs(None, a.pairs, params["prepare"]["seed"])
    text = openclip_text(clip, tok)  # what the world's denoiser is conditioned on (its frozen MiniLM, per token)
    rng = np.random.default_rng(params["prepare"]["seed"])
    labels = np.repeat(np.arange(10), 100)  # captions depend on an item's label only, so any items will do
    specs = [data.sample_spec(rng, labels) for _ in range(a.scenes)]
    rows = {}
    for attr, phrases in [(None, None)] + variants:
        name = "current" if attr is None else f"{attr}: " + " / ".join(phrases[:data.N_VALUES[attr]])
        t0 = time.perf_counter()
        with (words(attr, phrases) if attr else contextlib.nullcontext()):
            r, sig = text_oracle(clip, tok, pairs), conditioning_signal(text, specs)
        rows[name] = {"per_category": r.per_category, "mean": r.mean, "signal": sig, "seconds": time.perf_counter() - t0}
        print(f"{name}: mean {r.mean:.1f}, " + ", ".join(f"{c.split()[0]} {v:.0f}" for c, v in r.per_category.items())
              + "; signal " + ", ".join(f"{k} {v:.3f}" for k, v in sig.items()), flush=True)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True); (out / "results.json").write_text(json.dumps(rows, indent=1))
    cats = list(data.MMVP_CATEGORIES)
    table = [f"Text-only oracle (%, {a.pairs} pairs per category) with the shipped CLIP's text side, per wording:", "",
             "| words | " + " | ".join(c.split()[0].lower() for c in cats) + " | mean |", "|---|" + "---|" * (len(cats) + 1)]
    table += [f"| {n} | " + " | ".join(f"{r['per_category'][c]:.0f}" for c in cats) + f" | {r['mean']:.1f} |" for n, r in rows.items()]
    table += ["", f"Denoiser conditioning signal (relative change of MiniLM's per-token states when one attribute of a full caption "
              f"changes; mean over {a.scenes} random scenes), per wording:", "",
              "| words | " + " | ".join(SIGNAL_ATTRS) + " |", "|---|" + "---|" * len(SIGNAL_ATTRS)]
    table += [f"| {n} | " + " | ".join(f"{r['signal'][k]:.3f}" for k in SIGNAL_ATTRS) + " |" for n, r in rows.items()]
    print("\n".join(table)); (out / "table.md").write_text("\n".join(table) + "\n")
    return 0

if __name__ == "__main__": sys.exit(main())
