"""Benchmark of the DCR training step on the default stand-in models (stage 1: CLIP frozen, projector trained).

    .venv/bin/python benchmarks/dcr_step.py            # full run (about 10 minutes on a 2-core CPU; add --compile for the compile row)
    .venv/bin/python benchmarks/dcr_step.py --quick    # smoke test (under a minute)

Runs unchanged on a GPU (peak memory is then torch's allocated peak instead of the resident set).
Every configuration runs in a fresh subprocess, so each peak-memory figure is that configuration's own.
Two implementations of the same step are compared: "straightforward" (written here, naively, as the method
is usually written) and "ours" (dcr_nb.tasks.DCRTask with dcr_nb.speed.fast_denoise); both give the same
loss on the same inputs, which the script checks first. Times are the best of --repeats steps after one
warm-up step (the best is the least disturbed by other work on a shared machine).
"""
from __future__ import annotations
import argparse, json, os, platform, resource, subprocess, sys, time
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- the two steps (run inside a worker)
def build(cfg):
    "The stand-in world of the default profile (random weights: speed does not depend on them), on cfg's device."
    import torch
    from dcr_nb.encoder import create_encoder, get_tokenizer, embed_dim, Augment
    from dcr_nb.conditioning import standin_diffusion, ConditionBuilder, Projector
    torch.manual_seed(0)
    dev = cfg["device"]
    clip = create_encoder("tiny", random_init=True).requires_grad_(False).to(dev)
    diff = standin_diffusion(clip, get_tokenizer("tiny"))
    diff.unet.to(dev)
    if cfg.get("attention") == "classic":  # diffusers' unfused attention (baddbmm, softmax, bmm)
        from diffusers.models.attention_processor import AttnProcessor
        diff.unet.set_attn_processor(AttnProcessor())
    builder = ConditionBuilder(Projector(embed_dim(clip), diff.d_cross), diff.empty).to(dev)
    return clip, diff, builder, Augment()


def straightforward_step(clip, diff, builder, augment, images, denoise):
    "The DCR loss as usually written: codec and empty prompt every step, per-image augmentation, one batch of calls, exp then log."
    import torch, torch.nn.functional as F
    from dcr_nb.encoder import image_embedding
    B, _, H, W = images.shape; dev = images.device
    with torch.no_grad(): emb = image_embedding(clip, images)
    cond = builder.projector(emb)[:, None, :] + diff.text([""])  # empty prompt encoded again
    theta = augment.crop_theta(B, H, W, dev).to(images.dtype)  # same random draws as Augment.forward, then one image at a time
    s = torch.tensor(augment.jit[:3], device=dev)
    fac = torch.cat([1 + s * (2 * torch.rand(B, 3, device=dev) - 1), augment.jit[3] * (2 * torch.rand(B, 1, device=dev) - 1)], 1)
    order = torch.randperm(4, device=dev).tolist()
    views = []
    for b in range(B):
        v = F.grid_sample(images[b:b + 1], F.affine_grid(theta[b:b + 1], [1, 3, H, W], align_corners=False),
                          mode="bilinear", padding_mode="border", align_corners=False)
        views.append(augment.jitter(v, fac[b:b + 1], order))
    with torch.no_grad(): emb_pos = image_embedding(clip, torch.cat(views))
    cond_pos = builder.projector(emb_pos)[:, None, :] + diff.text([""])
    x0 = diff.codec.encode(images); noise = torch.randn_like(x0)
    t = torch.randint(0, diff.scheduler.config.num_train_timesteps, (B,), device=dev)
    x_t = diff.scheduler.add_noise(x0, noise, t)
    i = torch.arange(B, device=dev).repeat_interleave(B); j = torch.arange(B, device=dev).repeat(B)
    p = denoise(torch.cat([x_t[i], x_t]), torch.cat([t[i], t]), torch.cat([cond[j], cond_pos]))  # all B*B + B calls at once
    unit = lambda z: F.normalize(z.flatten(1), dim=-1)
    pairs, pos, y = unit(p[:B * B]).view(B, B, -1), unit(p[B * B:]), unit(noise)
    loss = 0
    for a in range(B):
        sims = [torch.exp(pairs[a, a] @ pos[a] / 0.1), torch.exp(pairs[a, a] @ y[a] / 0.1)]
        negs = [torch.exp(pairs[a, a] @ pairs[a, c] / 0.1) for c in range(B) if c != a]
        den = sum(sims) + sum(negs)
        loss = loss - 0.5 * (torch.log(sims[0] / den) + torch.log(sims[1] / den))
    return loss / B


class Timed:
    "Wraps a denoise callable; accumulates its forward time and the span of its backward pass (hooks on its output and input)."
    def __init__(self, fn, sync):
        self.fn, self.sync = fn, sync; self.reset()
    def reset(self): self.fwd, self.bwd_start, self.bwd_end, self.calls = 0.0, None, None, 0
    def _mark(self, kind):
        def hook(g):
            self.sync(); now = time.perf_counter()
            if kind == "start": self.bwd_start = now if self.bwd_start is None else min(self.bwd_start, now)
            else: self.bwd_end = now if self.bwd_end is None else max(self.bwd_end, now)
        return hook
    def __call__(self, x, t, cond):
        self.sync(); t0 = time.perf_counter(); out = self.fn(x, t, cond); self.sync(); self.fwd += time.perf_counter() - t0
        self.calls += len(x)
        if out.requires_grad and cond.requires_grad:
            out.register_hook(self._mark("start")); cond.register_hook(self._mark("end"))
        return out
    @property
    def total(self): return self.fwd + ((self.bwd_end - self.bwd_start) if self.bwd_start is not None and self.bwd_end is not None else 0.0)


def make_step(cfg, world):
    "A closure images -> loss for cfg['impl'], and the Timed denoiser inside it."
    import torch
    from dcr_nb.tasks import DCRTask, make_objective
    from dcr_nb.speed import fast_denoise
    clip, diff, builder, augment = world
    sync = torch.cuda.synchronize if cfg["device"].startswith("cuda") else (lambda: None)
    if cfg["impl"] == "straightforward":
        timed = Timed(diff.denoise, sync)
        return (lambda images: straightforward_step(clip, diff, builder, augment, images, timed)), timed
    base = fast_denoise(diff, prefix=cfg["prefix"], checkpoint=cfg["checkpoint"], channels_last=cfg["channels_last"],
                        compile=cfg["compile"]) if cfg["fast"] else diff.denoise
    timed = Timed(base, sync)
    task = DCRTask(clip, builder, diff, make_objective("dcr", chunk_size=cfg["chunk"], num_negatives=cfg["K"]),
                   augment=augment, denoise=timed)
    return (lambda images: task({"images": images})["loss"]), timed


def peak_memory(device):
    "Peak resident set (CPU) or peak allocated memory (GPU) so far, bytes."
    import torch
    if device.startswith("cuda"): return torch.cuda.max_memory_allocated()
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def worker(cfg):
    "Run one configuration: warm-up step, timed steps, peak memory, then a FLOP-counting step; print a JSON line."
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    if cfg["threads"]: torch.set_num_threads(cfg["threads"])
    world = build(cfg); clip, diff, builder, augment = world
    step, timed = make_step(cfg, world)
    opt = torch.optim.AdamW(builder.projector.parameters(), lr=1e-4, weight_decay=0.01)
    images = torch.rand(cfg["B"], 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(cfg["device"])
    sync = torch.cuda.synchronize if cfg["device"].startswith("cuda") else (lambda: None)
    base_mem = peak_memory(cfg["device"])
    def one(seed):
        torch.manual_seed(seed); timed.reset(); sync(); t0 = time.perf_counter()
        loss = step(images); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True); sync()
        return time.perf_counter() - t0, float(loss)
    t0 = time.perf_counter()
    first, _ = one(0)
    if cfg["compile"]: one(0)  # compile warm-up: the backward graph and the last chunk's shape compile late
    warm = time.perf_counter() - t0
    times = []
    for r in range(cfg["repeats"]):  # long steps (> 15 s) are timed once
        dt, loss = one(r + 1); times.append((dt, timed.total / dt, timed.calls))
        if dt > 15: break
    best, peak = min(times), peak_memory(cfg["device"])
    with FlopCounterMode(display=False) as fc: one(0)  # last: the counter keeps tensors alive (checkpointing's among them)
    print("RESULT " + json.dumps(dict(cfg=cfg, time=best[0], times=[t[0] for t in times], share=best[1], calls=best[2],
                                      flops=fc.get_total_flops(), peak=peak, base=base_mem,
                                      first=first, warm=warm, loss=loss)))


def check_equal(cfg):
    "Both implementations on the same images and random stream: losses and projector gradients."
    import torch
    world = build(cfg); _, _, builder, _ = world
    images = torch.rand(cfg["B"], 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(cfg["device"])
    out = {}
    for impl in ("straightforward", "ours"):
        step, _ = make_step({**cfg, "impl": impl}, world)
        torch.manual_seed(3); loss = step(images)
        out[impl] = (float(loss), torch.autograd.grad(loss, list(builder.projector.parameters())))
    a, b = out["straightforward"], out["ours"]
    gerr = max(float((g - h).abs().max() / h.abs().max().clamp_min(1e-12)) for g, h in zip(a[1], b[1]))
    print("RESULT " + json.dumps(dict(straightforward=a[0], ours=b[0], loss_diff=abs(a[0] - b[0]), grad_rel_diff=gerr)))


def matmul_peak(device, n=2048, reps=5):
    "Best float32 matmul rate (FLOP/s) of an n x n product on this device."
    import torch
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(reps):
        sync(); t0 = time.perf_counter(); a @ b; sync(); best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def prefix_estimate():
    "FLOP shares of the condition-independent prefix for the stand-in and for SD 2.1's UNet (meta device, no weights)."
    import torch
    from diffusers import UNet2DConditionModel
    from dcr_nb.conditioning import standin_unet, SD21_UNET
    from dcr_nb.speed import prefix_flops, prefix_saving
    out = {}
    with torch.device("meta"):
        for name, u, size in [("stand-in 32 px", standin_unet(), 32), ("SD 2.1 768 px (96x96 latent)", UNet2DConditionModel(**SD21_UNET), 96),
                              ("SD 2.1 512 px (64x64 latent)", UNet2DConditionModel(**SD21_UNET), 64)]:
            f = prefix_flops(u.requires_grad_(False), size)
            out[name] = dict(gflop=f["forward"] / 1e9, prefix_share=f["prefix"] / f["forward"],
                             saving_B16=prefix_saving(f, 17), saving_K3=prefix_saving(f, 5))
    return out


# ---------------------------------------------------------------- the driver
def run_sub(kind, cfg, timeout):
    "Run `kind` (worker/check/peak/prefix) with cfg in a fresh interpreter; its RESULT dict, or an error string."
    env = {**os.environ, "DCR_NB_ROOT": ROOT, "PYTHONWARNINGS": "ignore"}
    try:
        p = subprocess.run([sys.executable, __file__, "--_sub", kind, json.dumps(cfg)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired: return f"timed out after {timeout} s"
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else f"failed (rc {p.returncode}): {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}"


OURS = dict(impl="ours", fast=True, prefix=True, checkpoint=False, channels_last=True, compile=False, chunk=64, K=0)
PLAIN = dict(impl="ours", fast=False, prefix=False, checkpoint=False, channels_last=False, compile=False, chunk=0, K=0)
STRAIGHT = dict(PLAIN, impl="straightforward")


def gib(b): return b / 2**30


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="4,8,16,32", help="comma-separated B values of the main table")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per configuration (after one warm-up)")
    ap.add_argument("--ablation-batch", type=int, default=16, help="B of the speedup breakdown (the 1.3x target is at 16)")
    ap.add_argument("--negatives", default="1,3,7", help="K values of the sampled-negatives table (at B=8)")
    ap.add_argument("--chunk", type=int, default=64, help="denoiser calls per chunk in 'ours'")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="include the torch.compile row (default: on GPU only; on this 2-core CPU it compiles for ~3 min and is not faster)")
    ap.add_argument("--compile-timeout", type=int, default=300, help="seconds allowed for the compile row")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (0: torch's default); 1 keeps a shared machine's numbers stable")
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    ap.add_argument("--quick", action="store_true", help="smoke test: B=4 only, one repeat, memory at B 2 and 4, no breakdown, negatives or compile")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--_sub", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._sub:
        kind, cfg = a._sub[0], json.loads(a._sub[1])
        if cfg.get("threads"):
            import torch; torch.set_num_threads(cfg["threads"])
        return check_equal(cfg) if kind == "check" else worker(cfg)

    import torch
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    Bs = [4] if a.quick else [int(b) for b in a.batch_sizes.split(",")]
    Bab = a.ablation_batch
    Ks = [int(k) for k in a.negatives.split(",")]
    Bneg = 8
    reps = 1 if a.quick else a.repeats
    common = dict(device=device, threads=a.threads, repeats=reps)
    ours = dict(OURS, chunk=a.chunk)
    t_start = time.perf_counter(); results = {}
    cmd = "python benchmarks/dcr_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"# DCR step benchmark, {date.today()}, `{cmd.strip()}`")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {device}, "
          f"threads {a.threads or torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} at start\n")

    if a.threads: torch.set_num_threads(a.threads)
    peak = matmul_peak(device)
    chk = run_sub("check", dict(common, **ours, B=4), 300)
    results.update(matmul_peak=peak, check=chk)
    print(f"float32 matmul peak (2048^2, measured): {peak / 1e9:.0f} GFLOP/s")
    if isinstance(chk, dict):
        ok = chk["loss_diff"] <= 1e-5
        print(f"same loss check (B=4): straightforward {chk['straightforward']:.6f}, ours {chk['ours']:.6f}, "
              f"|diff| {chk['loss_diff']:.1e} ({'OK' if ok else 'FAILED'}, tolerance 1e-5); projector gradients rel. diff {chk['grad_rel_diff']:.1e}\n")
    else: print("same loss check:", chk)

    def row(name, r, ref=None, extra=""):
        if not isinstance(r, dict): return print(f"| {name} | {r} |")
        B = r["cfg"]["B"]; ips = B / r["time"]
        sp = f"{ref['time'] / r['time']:.2f}x" if isinstance(ref, dict) else ""
        print(f"| {name} | {B} | {r['time']:.2f} | {ips:.1f} | {r['calls'] / r['time']:.0f} | {gib(r['peak']):.2f} | "
              f"{r['flops'] / r['time'] / 1e9:.1f} ({r['flops'] / r['time'] / peak:.0%}) | {r['share']:.0%} | {sp} |{extra}")
    head = "| step | B | s/step | images/s | denoiser calls/s | peak GiB | GFLOP/s (of peak) | denoiser share | speedup |"
    sep = "|---|---|---|---|---|---|---|---|---|"

    print("## Straightforward vs ours\n"); print(head); print(sep)
    main_rows = {}
    for B in Bs:
        s = run_sub("worker", dict(common, **STRAIGHT, B=B), 900); o = run_sub("worker", dict(common, **ours, B=B), 900)
        main_rows[B] = (s, o); row("straightforward", s); row("ours", o, s)
    results["main"] = main_rows

    if not a.quick: print(f"\n## Where the speedup comes from (B={Bab}, each row adds one change to the row above)\n\n{head}\n{sep}")
    abl = [] if a.quick else [("straightforward", dict(STRAIGHT)),
           ("+ DCRTask: cached empty prompt, batched augmentation, stable loss", dict(PLAIN)),
           (f"+ chunks of {a.chunk} calls", dict(PLAIN, chunk=a.chunk)),
           ("+ shared prefix (fast_denoise)", dict(PLAIN, fast=True, prefix=True, chunk=a.chunk)),
           ("+ channels-last (= ours)", dict(ours)),
           ("ours with unfused attention", dict(ours, attention="classic"))]
    if (device != "cpu" if a.compile is None else a.compile) and not a.quick: abl.append(("ours + torch.compile", dict(ours, compile=True)))
    abl_res, prev, ref = {}, None, None
    for name, c in abl:
        same = Bab in main_rows and c in (STRAIGHT, ours)  # already measured in the table above
        r = main_rows[Bab][0 if c == STRAIGHT else 1] if same else run_sub("worker", dict(common, **c, B=Bab), a.compile_timeout if c.get("compile") else 900)
        extra = f" compile + first steps: {r['warm']:.0f} s" if isinstance(r, dict) and c.get("compile") else ""
        ref = ref or r
        row(name, r, prev if "unfused" not in name and "compile" not in name else abl_res.get("+ channels-last (= ours)"), extra)
        abl_res[name] = r
        if "unfused" not in name and "compile" not in name: prev = r
    if isinstance(ref, dict) and isinstance(abl_res.get("+ channels-last (= ours)"), dict):
        print(f"\nours / straightforward at B={Bab}: {ref['time'] / abl_res['+ channels-last (= ours)']['time']:.2f}x (target 1.3x)")
    results["ablation"] = abl_res

    Bsmall, Bbig = (2, 4) if a.quick else (8, 32)
    print(f"\n## Memory: chunks of {a.chunk} calls + activation checkpointing\n"); print(head); print(sep)
    mem = {}
    for B in (Bsmall, Bbig):
        mem[B] = run_sub("worker", {**common, **ours, "checkpoint": True, "B": B}, 900)
        row("ours + checkpointing", mem[B], main_rows.get(B, (None, None))[1] if B in main_rows else None)
    if all(isinstance(m, dict) for m in mem.values()):
        r = mem[Bbig]["peak"] / mem[Bsmall]["peak"]
        print(f"\npeak at B={Bbig} / peak at B={Bsmall}: {r:.2f} (limit 2.5; process baseline before the first step "
              f"{gib(mem[Bsmall]['base']):.2f} GiB); above that baseline: {gib(mem[Bsmall]['peak'] - mem[Bsmall]['base']):.2f} -> "
              f"{gib(mem[Bbig]['peak'] - mem[Bbig]['base']):.2f} GiB")
        if Bbig in main_rows and isinstance(main_rows[Bbig][1], dict):
            print(f"time cost of checkpointing at B={Bbig}: {mem[Bbig]['time'] / main_rows[Bbig][1]['time']:.2f}x the step time of ours without it")
    results["memory"] = mem

    neg = {}
    if not a.quick:
        print(f"\n## Sampled negatives (ours, B={Bneg}; K={Bneg - 1} is all negatives)\n"); print(head); print(sep)
        neg["all"] = main_rows[Bneg][1] if Bneg in main_rows else run_sub("worker", dict(common, **ours, B=Bneg), 900)
        row("all negatives", neg["all"])
        for K in Ks:
            neg[K] = run_sub("worker", {**common, **ours, "K": K, "B": Bneg}, 900); row(f"K={K}", neg[K], neg["all"])
    results["negatives"] = neg

    pre = prefix_estimate()
    print("\n## The prefix trick by FLOP count (denoiser FLOPs of a step it removes)\n")
    if isinstance(pre, dict):
        print("| UNet | GFLOP per call | prefix share of a call | saving at B=16, all negatives | saving at K=3 |\n|---|---|---|---|---|")
        for k, v in pre.items():
            print(f"| {k} | {v['gflop']:.2f} | {v['prefix_share']:.1%} | {v['saving_B16']:.1%} | {v['saving_K3']:.1%} |")
    else: print(pre)
    results["prefix"] = pre
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")
    if a.json:
        with open(a.json, "w") as f: json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
