"""How fast does the world's denoiser pretraining step run in float32 and under bfloat16 autocast on this CPU?

The world's build time is mostly the denoiser's pretraining (`world/params.yaml: pretrain_denoiser`), and its lever
is training length (README, "Training length is the denoiser's lever"). The training loop runs CPUs in float32
unless a stage sets `cpu_bf16` (`dcr_nb.train._accelerator`; the world's pretrain_denoiser does, since this script
measured it). This script times the same update, the world's UNet
on rendered scenes with their full captions' MiniLM states (memoised first, as in the 12,000-step build after its
first epoch), in float32 and under `torch.autocast("cpu", torch.bfloat16)`, alternating the two for `--rounds`
rounds so that both see the same machine load; it also prints the loss of one fixed batch in each precision.

    .venv/bin/python benchmarks/denoiser_step.py [--steps 8] [--rounds 2] [--batch-size 32]

Prints seconds per update (best round and mean over rounds) and the ratio float32 / bfloat16; the CPU's
bfloat16 instructions (avx512_bf16, amx_bf16), which decide whether bfloat16 pays, are printed with them.
"""
import argparse, sys, time
from pathlib import Path
import numpy as np, torch, yaml
from dcr_nb.conditioning import standin_diffusion
from dcr_nb.core import root_path
from dcr_nb.data import full_caption, to_tensor
from dcr_nb.encoder import get_tokenizer
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.pretrain import text_tower_only
from dcr_nb.tasks import DenoiserPretrainTask
from dcr_nb.world import WORLD_STREAMS, render_specs, world_specs

PRECISIONS = {"float32": False, "bfloat16": True}

def cpu_bf16_flags() -> str:
    "The CPU's bfloat16 instruction flags from /proc/cpuinfo ('' where there are none or it cannot be read)."
    try: flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration): return ""
    return " ".join(f for f in flags if "bf16" in f)

def batches(n_batches: int, batch_size: int, seed: int = 0) -> list[dict]:
    "`n_batches` batches of rendered scenes (train items) with their full captions, as `scene_batches` gives them."
    images, labels = load_fashion_mnist("train")
    specs = world_specs(labels, n_batches * batch_size, seed, WORLD_STREAMS["reader"])
    x = to_tensor(render_specs(specs, images))
    caps = [full_caption(s) for s in specs]
    return [{"images": x[i:i + batch_size], "captions": caps[i:i + batch_size]} for i in range(0, len(specs), batch_size)]

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="timed updates per precision and round")
    p.add_argument("--rounds", type=int, default=2, help="rounds, each timing float32 then bfloat16")
    p.add_argument("--batch-size", type=int, default=0, help="scenes an update (0: the world's pretrain_denoiser.batch_size)")
    a = p.parse_args(argv)
    for k in ("steps", "rounds"):
        if getattr(a, k) < 1: raise SystemExit(f"--{k} {getattr(a, k)}: must be >= 1")
    if a.batch_size < 0: raise SystemExit(f"--batch-size {a.batch_size}: must be >= 1 (or 0 for the world's)")
    pd_ = yaml.safe_load(root_path("world/params.yaml").read_text())["pretrain_denoiser"]
    bs = a.batch_size or pd_["batch_size"]
    torch.manual_seed(0)
    d = standin_diffusion(text_tower_only("lit"), get_tokenizer("lit"), prediction_type=pd_["prediction_type"], memo=True)
    d.unet.requires_grad_(True).train(); task = DenoiserPretrainTask(d, pd_["cond_drop"])
    opt = torch.optim.AdamW([q for q in task.parameters() if q.requires_grad], pd_["lr"], weight_decay=pd_["weight_decay"])
    data = batches(a.steps, bs)
    with torch.no_grad():  # memoise every caption's MiniLM states, and one fixed batch's loss per precision
        for b in data: task(b)
        losses = {}
        for name, bf16 in PRECISIONS.items():
            torch.manual_seed(1)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16): losses[name] = float(task(data[0])["loss"])

    def update(b, bf16):
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16): loss = task(b)["loss"]
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)

    times = {name: [] for name in PRECISIONS}
    for r in range(a.rounds):
        for name, bf16 in PRECISIONS.items():
            update(data[0], bf16)  # one warm-up update
            t0 = time.perf_counter()
            for b in data: update(b, bf16)
            times[name].append((time.perf_counter() - t0) / len(data))
            print(f"round {r + 1}/{a.rounds} {name}: {times[name][-1]:.3f} s an update", flush=True)
    print(f"\nThe world's denoiser update, batch {bs}, {torch.get_num_threads()} threads, CPU bf16 flags: {cpu_bf16_flags() or 'none'}")
    print("| precision | s an update (best) | s an update (mean) | loss of one fixed batch |\n|---|---|---|---|")
    for name in PRECISIONS: print(f"| {name} | {min(times[name]):.3f} | {np.mean(times[name]):.3f} | {losses[name]:.4f} |")
    print(f"float32 / bfloat16 (best): {min(times['float32']) / min(times['bfloat16']):.2f}x")
    return 0

if __name__ == "__main__": sys.exit(main())
