"""Ready for the GPU: one prepared check of the paper profile at real size (issue 18).

    make gpu-check                                              # on a CUDA machine: under 5 minutes
    .venv/bin/python benchmarks/gpu_check.py --out outputs/gpu_check/gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --tiny             # the same code path on CPU, tiny shapes (under a minute)

Builds Stable Diffusion 2.1's UNet and VAE shapes (random weights: speed and memory do not depend on them), a random
text tower of SD 2.1's shape for the empty prompt, and the paper's OpenAI ViT-L-14 at 224 and 336 px (random weights),
then the real `DCRTask` of stage 1 (projector trained) and stage 2 (LoRA r16 on the image tower) through
`dcr_nb.dcr_stages.dcr_task`. At B = 16 per GPU it times the training micro-step as `dcr_nb.train` runs it (bf16 autocast
as accelerate's mixed_precision=bf16 with fp32 weights, forward, backward, grad clip, AdamW, schedule; deterministic
algorithms on, as the trainer sets them) and its peak memory, for the straightforward step and for ours (`fast=True`)
with chunk sizes 16, 64 and all, with and without activation checkpointing, with PyTorch SDPA attention, then
torch.compile on the fastest setting that fits. Out-of-memory settings are recorded as OOM. It prints one table,
projects the paper recipe's wall time on 8 GPUs of this kind, picks the fastest setting that fits an 80 GB A100 and
prints the `dcr:` keys for paper/params.yaml, and writes everything to --out as JSON.
Settings run in priority order within a time budget (--budget-s); what the budget leaves out is recorded as skipped.
"""
from __future__ import annotations
import argparse, dataclasses, gc, json, os, platform, statistics, sys, tempfile, threading, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "outputs/gpu_check/gpu_check.json"
GIB = 2 ** 30

PAPER = dict(stage1_steps=100_000, stage2_steps=4_600, batch=16, gpus=8, grad_accum=2, hours=7.7, peak_gb=53.5,
             backbone="openai-l14", source="paper Table 8: OpenAI ViT-L-14 at 224 px, 8 A100s")
COMPILE_LAYOUT = ("compiled without channels-last: with it, the compiled backward fails in torch 2.14 (AOTAutograd: 'view size is not "
                  "compatible with input tensor's size and stride', seen with backend aot_eager on CPU); inductor chooses conv layouts itself")
NOISE = 0.02  # relative step-time differences below this are taken as timing noise (compile's gain)
A100_BF16_TFLOPS = 312  # dense bf16 peak of an A100, for the implied-throughput line

# Stable Diffusion 2.1's VAE and noise schedule (stabilityai/stable-diffusion-2-1 vae/config.json, scheduler_config.json)
SD21_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu", latent_channels=4,
                norm_num_groups=32, sample_size=768, scaling_factor=0.18215)
SD21_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="v_prediction", clip_sample=False, steps_offset=1)


@dataclasses.dataclass(frozen=True)
class Profile:
    "Shapes and run lengths of one check: the real sizes (GPU) or tiny ones (the same code on CPU)."
    name: str
    unet: dict          # UNet2DConditionModel kwargs
    vae: dict           # AutoencoderKL kwargs
    text: dict          # CLIPTextConfig kwargs of the text tower that encodes the empty prompt
    backbones: tuple    # BACKBONES keys, in priority order
    batch: int          # images per micro-batch and GPU
    chunks: tuple       # chunk sizes of ours (0 = all calls at once)
    warmup: int         # untimed steps per setting
    steps: int          # timed steps per setting (the median is reported)


def profiles():
    "The real-size profile and the tiny one (SD 2.1's block layout with tiny widths, a two-level VAE, the tiny CLIP)."
    from dcr_nb.conditioning import SD21_UNET, SD21_TEXT
    real = Profile("paper shapes", SD21_UNET, SD21_VAE, SD21_TEXT, ("openai-l14", "openai-l14-336"), 16, (16, 64, 0), 1, 3)
    tiny = Profile("tiny", {**SD21_UNET, "block_out_channels": (16, 16, 32, 32), "attention_head_dim": (1, 1, 2, 2), "layers_per_block": 1,
                            "cross_attention_dim": 32, "norm_num_groups": 8, "sample_size": 16},
                   {**SD21_VAE, "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
                    "block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 32},
                   {**SD21_TEXT, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "projection_dim": 32},
                   ("tiny",), 4, (16, 64, 0), 1, 1)  # B = 4: 20 denoiser calls, so chunks of 16 really split
    return real, tiny


@dataclasses.dataclass(frozen=True)
class Setting:
    "One way to run the step: the `dcr:` keys of paper/params.yaml (fast, chunk_size, checkpoint), plus torch.compile."
    fast: bool
    chunk_size: int
    checkpoint: bool
    compile: bool = False

    @property
    def name(self) -> str:
        base = "straightforward" if not self.fast and not self.chunk_size and not self.checkpoint else \
            ("ours" if self.fast else "plain") + f":{'c' + str(self.chunk_size) if self.chunk_size else 'all'}" + ("+ckpt" if self.checkpoint else "")
        return base + ("+compile" if self.compile else "")


def grid(chunks) -> list[Setting]:
    "The straightforward step (fast=False, one chunk, no checkpointing), then ours for each chunk size without and with checkpointing."
    return [Setting(False, 0, False)] + [Setting(True, c, k) for c in chunks for k in (False, True)]


# ---------------------------------------------------------------- models
def build_diffusion(prof: Profile, dev: str):
    "The frozen diffusion side: UNet, VAE codec, SD 2.1's schedule, and a random text tower of (1, 77, d_cross) states for the empty prompt."
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from dcr_nb.conditioning import Diffusion, TextEncoder, VAECodec
    from dcr_nb.encoder import get_tokenizer
    torch.manual_seed(0)
    with torch.device(dev):  # random init on the device: seconds instead of a minute for 1.3 B parameters on the CPU
        unet = UNet2DConditionModel(**prof.unet).requires_grad_(False).eval()
        vae = AutoencoderKL(**prof.vae)
        text = CLIPTextModel(CLIPTextConfig(**prof.text)).requires_grad_(False).eval()
    enc = TextEncoder(get_tokenizer("ViT-L-14-quickgelu"), lambda ids: text(ids).last_hidden_state, text)
    d = Diffusion(unet, DDPMScheduler(**SD21_SCHEDULER), VAECodec(vae), enc)
    if d.empty.shape != (1, 77, d.d_cross): raise RuntimeError(f"empty-prompt states {tuple(d.empty.shape)}, expected (1, 77, {d.d_cross})")
    text.to("cpu")  # as in training: the text tower is no part of the task (only its empty-prompt states are)
    return d


def build_clip(key: str, dev: str):
    "A frozen open_clip model of BACKBONES key `key` with random weights, as the paper profile freezes it."
    import torch
    from dcr_nb.encoder import create_encoder
    torch.manual_seed(0)
    with torch.device(dev): return create_encoder(key, random_init=True, device=dev).requires_grad_(False).eval()


def n_params(m) -> int: return sum(p.numel() for p in m.parameters())


def stage_config(prof: Profile, key: str, stage: int, s: Setting, projector: str = ""):
    "The `DCRStageConfig` of the paper recipe's stage `stage` (paper/params.yaml's numbers) with setting `s`."
    from dcr_nb.dcr_stages import DCRStageConfig
    return DCRStageConfig(stage=stage, objective="dcr", tau=0.1, num_negatives=0, chunk_size=s.chunk_size, fast=s.fast,
                          checkpoint=s.checkpoint, hflip=0.5, vflip=0.5, model=key, lora_r=16 if stage == 2 else 0,
                          lora_alpha=16.0, lora_dropout=0.1, projector=projector if stage == 2 else "",
                          steps=PAPER[f"stage{stage}_steps"], batch_size=prof.batch, grad_accum=PAPER["grad_accum"],
                          lr=1e-4 if stage == 1 else 1e-5, weight_decay=0.01, grad_clip=1.0, mixed_precision="bf16", seed=0)


def build_task(cfg, s: Setting, clip, d, dev: str):
    "The real task through `dcr_task` (LoRA adapters of an earlier setting removed first); torch.compile swapped in when `s.compile`."
    import torch
    from dcr_nb.dcr_stages import dcr_task
    from dcr_nb.paper import compiled_denoise
    from dcr_nb.encoder import LoraLinear, LoraAttention, LoraProjection, _swap
    for name, m in list(clip.visual.named_modules()):  # take an earlier setting's adapters off, unmerged: dcr_task adds fresh ones
        if isinstance(m, (LoraLinear, LoraAttention)): _swap(clip.visual, name, m.base)
        elif isinstance(m, LoraProjection): _swap(clip.visual, name, m.weight)
    if not s.fast: d.unet.to(memory_format=torch.contiguous_format)  # undo an earlier fast setting's in-place channels-last
    task = dcr_task(cfg, clip, d)
    if s.compile: task.denoise = compiled_denoise(d, s.fast, s.checkpoint)  # as the paper task builder's `compile: true` (no channels-last: COMPILE_LAYOUT)
    return task.to(dev)


def save_projector(prof: Profile, key: str, clip, d, dev: str, folder: str) -> str:
    "A stage 1 projector file for stage 2's config: `task.builder.projector_state()` of a stage 1 task, saved with torch.save."
    import torch
    task = build_task(stage_config(prof, key, 1, grid(prof.chunks)[0]), grid(prof.chunks)[0], clip, d, dev)
    path = os.path.join(folder, f"{key}-projector.pt"); torch.save(task.builder.projector_state(), path)
    return path


# ---------------------------------------------------------------- measuring
class PeakMemory:
    "Peak memory inside a `with` block: torch's allocated (and reserved) peak on CUDA; on CPU the resident set, sampled every 2 ms."
    def __init__(self, dev: str):
        self.cuda, self.peak, self.reserved = dev.startswith("cuda"), 0, None

    def _rss(self) -> int:
        with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.002): self.peak = max(self.peak, self._rss())

    def __enter__(self):
        import torch
        gc.collect()
        if self.cuda: torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        else:
            self.peak, self._stop = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True); self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch
        if self.cuda: self.peak, self.reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        else: self._stop.set(); self._thread.join(); self.peak = max(self.peak, self._rss())
        return False


def memory_method(dev: str) -> str:
    return ("torch.cuda.max_memory_allocated (reset before each setting; includes the models' weights)" if dev.startswith("cuda") else
            "peak resident set size of the process (RSS from /proc/self/statm, sampled every 2 ms; includes the models and "
            "what the allocator kept from earlier settings, so it does not compare settings: only GPU numbers do)")


def train_step(task, opt, sched, images, cfg, dev: str, seed: int, fake_oom: bool = False) -> float:
    "One micro-batch and update as `dcr_nb.train` runs it (grad_accum 1): autocast forward, backward, grad clip, AdamW, schedule; seconds."
    import torch
    cuda = dev.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(seed); sync(); t0 = time.perf_counter()
    with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda and cfg.mixed_precision == "bf16"):
        loss = task({"images": images, "k": seed})["loss"]
        if fake_oom: raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake, from --fake-oom: tests the OOM path)")
        if not torch.isfinite(loss): raise FloatingPointError(f"non-finite loss {loss.item()}")
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in task.parameters() if p.requires_grad], cfg.grad_clip)
    opt.step(); sched.step(); opt.zero_grad(set_to_none=True); sync()
    return time.perf_counter() - t0


def measure(task, cfg, prof: Profile, dev: str, image_size: int, s: Setting, fake_oom: bool) -> dict:
    "Warm-up steps (two with compile: backward and dynamic shapes compile late), then timed steps: median time, peak memory."
    import torch
    from dcr_nb.train import make_optimizer
    opt, sched = make_optimizer(task, cfg)
    images = torch.rand(prof.batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)).to(dev)
    warm, times = [], []
    with PeakMemory(dev) as mem:
        for k in range(prof.warmup + (1 if s.compile else 0)): warm.append(train_step(task, opt, sched, images, cfg, dev, k, fake_oom))
        for k in range(prof.steps):
            times.append(train_step(task, opt, sched, images, cfg, dev, 100 + k))
            if times[-1] > 20: break  # a very slow step: one timing is enough
    step = statistics.median(times)
    out = dict(step_ms=1e3 * step, step_ms_all=[1e3 * t for t in times], warmup_s=sum(warm), images_per_s=prof.batch / step,
               peak_gb=mem.peak / GIB, reserved_gb=None if mem.reserved is None else mem.reserved / GIB,
               trainable=sum(p.numel() for p in task.parameters() if p.requires_grad))
    if s.compile: out["compile_s"] = max(sum(warm) - len(warm) * step, 0.0)  # compile time = the warm-up steps' excess over steady steps
    return out


def free(dev: str):
    import torch
    gc.collect()
    if dev.startswith("cuda"): torch.cuda.empty_cache()


def run_setting(prof: Profile, key: str, image_size: int, stage: int, s: Setting, clip, d, dev: str, projector: str, fake_oom: set) -> dict:
    "Build the task for one setting and measure it; an out-of-memory error is a row with status 'oom', any other error one with 'error'."
    import torch
    row = dict(backbone=key, image_size=image_size, stage=stage, setting=s.name, **dataclasses.asdict(s), channels_last=s.fast and not s.compile)
    if s.compile: row["note"] = COMPILE_LAYOUT
    t0, oom = time.perf_counter(), None
    try:
        cfg = stage_config(prof, key, stage, s, projector)
        task = build_task(cfg, s, clip, d, dev)
        row.update(status="ok", **measure(task, cfg, prof, dev, image_size, s, s.name in fake_oom))
    except torch.cuda.OutOfMemoryError as e:  # handled below, outside this block, once the traceback's tensors are gone
        oom = str(e).strip().splitlines()[0][:200]
    except Exception as e:
        row.update(status="error", reason=f"{type(e).__name__}: {str(e).strip()[:300]}")
    task = None
    if oom is not None:
        at = torch.cuda.max_memory_allocated() / GIB if dev.startswith("cuda") else None
        row.update(status="oom", reason=oom, peak_gb_at_oom=at)
    free(dev)
    row["wall_s"] = time.perf_counter() - t0
    return row


# ---------------------------------------------------------------- picking and projecting
def fits(r: dict, fit_gb: float) -> bool: return r.get("status") == "ok" and r["peak_gb"] <= fit_gb


def stage_pick(rows, key: str, stage: int, fit_gb: float) -> dict | None:
    "The fastest measured setting of `key`'s stage `stage` that fits, without torch.compile (reported apart: `dcr.compile` in paper/params.yaml)."
    ok = [r for r in rows if r["backbone"] == key and r["stage"] == stage and fits(r, fit_gb) and not r["compile"]]
    return min(ok, key=lambda r: r["step_ms"], default=None)


def hours(step_ms: float, stage: int) -> float:
    "Wall hours of stage `stage` of the paper recipe on 8 GPUs: each GPU runs steps x grad_accum micro-steps of B = 16."
    return PAPER[f"stage{stage}_steps"] * PAPER["grad_accum"] * step_ms / 1e3 / 3600


def pick_and_project(rows, backbones, stages, fit_gb: float, flops: dict) -> dict:
    "Per backbone: each stage's fastest fitting setting, the one `dcr:` setting best for both stages, and the recipe's projected wall time."
    out = {}
    for key in backbones:
        mine = [r for r in rows if r["backbone"] == key]
        if not mine: continue
        per_stage = {f"stage{st}": stage_pick(rows, key, st, fit_gb) for st in stages}
        names = {r["setting"] for r in mine if not r["compile"]}
        both = []  # one `dcr:` section serves both stages: the setting that fits in every stage with the least total time
        for n in names:
            rs = {st: next((r for r in mine if r["setting"] == n and r["stage"] == st), None) for st in stages}
            if all(r is not None and fits(r, fit_gb) for r in rs.values()):
                both.append((sum(hours(r["step_ms"], st) for st, r in rs.items()), n, rs))
        p = dict(stage_picks={k: v and {f: v[f] for f in ("setting", "step_ms", "peak_gb")} for k, v in per_stage.items()})
        if both:
            total, n, rs = min(both)
            first = next(iter(rs.values()))
            p.update(setting=n, dcr={"chunk_size": first["chunk_size"], "checkpoint": first["checkpoint"], "fast": first["fast"]},
                     hours={f"stage{st}": hours(r["step_ms"], st) for st, r in rs.items()}, total_hours=total,
                     step_ms={f"stage{st}": r["step_ms"] for st, r in rs.items()},
                     peak_gb={f"stage{st}": r["peak_gb"] for st, r in rs.items()})
            comp = {}
            # each stage is its own process in the pipeline and compiles afresh; here a later stage may reuse the first one's cache
            cost = max((x["compile_s"] for x in mine if x["setting"] == n + "+compile" and x["status"] == "ok"), default=0.0)
            for st, r in rs.items():  # torch.compile of the same setting, where measured: does its compile time pay back within the run?
                c = next((x for x in mine if x["stage"] == st and x["compile"] and x["setting"] == n + "+compile" and x["status"] == "ok"), None)
                if c is None: continue
                saved = r["step_ms"] - c["step_ms"]; micro = PAPER[f"stage{st}_steps"] * PAPER["grad_accum"]
                payback = cost / (saved / 1e3) if saved > NOISE * r["step_ms"] else None  # a gain within timing noise is none
                comp[f"stage{st}"] = dict(compile_s=cost, step_ms=c["step_ms"], speedup=r["step_ms"] / c["step_ms"],
                                         payback_micro_steps=payback, run_micro_steps=micro, pays_back=payback is not None and payback < micro,
                                         hours_with_compile=cost / 3600 + hours(c["step_ms"], st))
            if comp:
                p["compile"] = comp
                p["total_hours_with_compile_where_it_pays"] = sum(comp[k]["hours_with_compile"] if k in comp and comp[k]["pays_back"] else p["hours"][k] for k in p["hours"])
            sf = {st: next((r for r in mine if r["setting"] == "straightforward" and r["stage"] == st and r["status"] == "ok"), None) for st in stages}
            if all(sf.values()):
                p["straightforward_total_hours"] = sum(hours(r["step_ms"], st) for st, r in sf.items())
                p["straightforward_fits"] = all(fits(r, fit_gb) for r in sf.values())
        else: p.update(setting=None, reason=f"no setting measured in every stage fits {fit_gb:g} GB")
        f = flops.get(key)
        if f: p["denoiser_tflop_per_micro_step"] = f["tflop_per_micro_step"]
        if key == PAPER["backbone"] or len(backbones) == 1:
            micro = (PAPER["stage1_steps"] + PAPER["stage2_steps"]) * PAPER["grad_accum"]
            paper = dict(hours=PAPER["hours"], peak_gb=PAPER["peak_gb"], source=PAPER["source"],
                         implied_ms_per_micro_step=PAPER["hours"] * 3600 / micro * 1e3)
            if f: paper["implied_denoiser_tflops_per_gpu"] = f["tflop_per_micro_step"] / (paper["implied_ms_per_micro_step"] / 1e3)
            p["paper"] = paper
        out[key] = p
    return out


def denoiser_flops(prof: Profile, d, image_size: int) -> dict:
    "Denoiser FLOPs of one straightforward micro-step (B(B+1) calls, forward and backward to the condition), counted on the meta device."
    import torch
    from diffusers import UNet2DConditionModel
    from dcr_nb.speed import prefix_flops
    latent = image_size // d.codec.factor
    with torch.device("meta"): f = prefix_flops(UNet2DConditionModel(**prof.unet).requires_grad_(False), latent)
    per_call = f["prefix"] + f["suffix_fwd_bwd"]  # the whole forward + the backward from the output to the condition
    calls = prof.batch * (prof.batch + 1)
    return dict(latent=latent, gflop_forward_per_call=f["forward"] / 1e9, calls=calls, tflop_per_micro_step=calls * per_call / 1e12)


# ---------------------------------------------------------------- reporting
def fmt(x, spec): return "-" if x is None else format(x, spec)


def table(rows, fit_gb: float) -> str:
    lines = ["| backbone | stage | setting | step time ms | peak GB | images/s | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            note = ("fits" if r["peak_gb"] <= fit_gb else "over") + f" {fit_gb:g} GB"
            if r.get("compile_s") is not None: note += f"; compile {r['compile_s']:.0f} s"
            lines.append(f"| {r['backbone']} ({r['image_size']} px) | {r['stage']} | {r['setting']} | {r['step_ms']:.0f} | "
                         f"{r['peak_gb']:.2f} | {r['images_per_s']:.1f} | {note} |")
        else:
            what = {"oom": "OOM", "skipped": "skipped", "timeout": "timeout", "error": "ERROR"}[r["status"]]
            lines.append(f"| {r['backbone']} ({r['image_size']} px) | {r['stage']} | {r['setting']} | {what} | "
                         f"{'>' + fmt(r['peak_gb_at_oom'], '.1f') if r.get('peak_gb_at_oom') is not None else '-'} | - | {r.get('reason', '')} |")
    return "\n".join(lines)


def report(picks: dict, fit_gb: float, device_name: str) -> str:
    L = []
    for key, p in picks.items():
        L.append(f"\n## {key}")
        L.append("fastest setting that fits per stage: " + ", ".join(f"{k} {v['setting']} ({v['step_ms']:.0f} ms, {v['peak_gb']:.1f} GB)" if v else f"{k} none"
                                                              for k, v in p["stage_picks"].items()))
        if p.get("setting") is None: L.append(p.get("reason", "")); continue
        h = p["hours"]
        L.append(f"projected paper recipe on 8 x {device_name} with {p['setting']}: "
                 + " + ".join(f"{k} {v:.1f} h" for k, v in h.items()) + f" = {p['total_hours']:.1f} h"
                 + (f" (straightforward: {p['straightforward_total_hours']:.1f} h"
                    + ("" if p.get("straightforward_fits") else f", does not fit {fit_gb:g} GB") + ")" if "straightforward_total_hours" in p else ""))
        for st, c in p.get("compile", {}).items():
            L.append(f"torch.compile, {st}: {c['speedup']:.2f}x per step, compile {c['compile_s']:.0f} s, pays back after "
                     f"{fmt(c['payback_micro_steps'], ',.0f')} of {c['run_micro_steps']:,} micro-steps: {'yes' if c['pays_back'] else 'no'}")
        if "total_hours_with_compile_where_it_pays" in p:
            L.append(f"  with compile where it pays back: {p['total_hours_with_compile_where_it_pays']:.1f} h "
                     "(paper/params.yaml: dcr.compile: true; the pick below is without it)")
        if "paper" in p:
            q = p["paper"]
            L.append(f"paper: {q['hours']} h and {q['peak_gb']} GB ({q['source']}), i.e. {q['implied_ms_per_micro_step']:.0f} ms per micro-step of B = 16"
                     + (f"; with all B(B+1) = {PAPER['batch'] * (PAPER['batch'] + 1)} calls of this denoiser that is {q['implied_denoiser_tflops_per_gpu']:.3g} "
                        f"TFLOP/s per GPU for the denoiser alone (A100 dense bf16 peak: {A100_BF16_TFLOPS})" if "implied_denoiser_tflops_per_gpu" in q else ""))
        d, comp = p["dcr"], p.get("compile", {})
        pays = bool(comp) and all(c["pays_back"] for c in comp.values())  # measured in every stage it ran, and paid back there
        L.append(f"put in paper/params.yaml for backbone {key} (the fastest setting that fits {fit_gb:g} GB in every stage):\n"
                 f"dcr:\n  chunk_size: {d['chunk_size']}\n  checkpoint: {str(d['checkpoint']).lower()}\n  fast: {str(d['fast']).lower()}"
                 + (f"\n  compile: true      # measured in {', '.join(comp)}: it pays back" if pays else ""))
    return "\n".join(L)


# ---------------------------------------------------------------- the driver
def skipped(key, S, stage, s: Setting, reason: str, status: str = "skipped") -> dict:
    return dict(backbone=key, image_size=S, stage=stage, setting=s.name, **dataclasses.asdict(s), status=status, reason=reason)


def isolated(a, key: str, S: int, stages, s: Setting, timeout: float) -> list[dict]:
    "Rows of setting `s` for `stages`, measured by a fresh process of this script that is killed after `timeout` s (torch.compile's time is unknown)."
    import signal, subprocess
    cmd = [sys.executable, __file__, "--_one", json.dumps(dict(key=key, stages=list(stages), setting=dataclasses.asdict(s)))]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k in ("device", "threads", "fake_oom") and v not in (None, "")]
    cmd += ["--tiny"] * a.tiny
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    try: (out, err), timed_out = p.communicate(timeout=timeout), False
    except subprocess.TimeoutExpired:  # the child's whole process group: inductor's compile workers too
        os.killpg(p.pid, signal.SIGKILL); (out, err), timed_out = p.communicate(), True
    done = {r["stage"]: r for r in (json.loads(l[7:]) for l in out.splitlines() if l.startswith("RESULT "))}
    tail = (err.strip().splitlines() or [""])[-1][:300]
    return [done.get(st) or (skipped(key, S, st, s, f"killed after {timeout:.0f} s (--total-s {a.total_s:g}, --compile-timeout {a.compile_timeout})", "timeout") if timed_out
                             else skipped(key, S, st, s, f"its process failed: {tail}", "error")) for st in stages]


def one(a, dev: str) -> int:
    "The child of `isolated`: build everything, measure one setting in each given stage, print a RESULT line per stage."
    spec = json.loads(a._one); prof = profiles()[1 if a.tiny else 0]; s = Setting(**spec["setting"])
    d, clip = build_diffusion(prof, dev), build_clip(spec["key"], dev)
    from dcr_nb.evaluate import model_image_size
    S = model_image_size(clip)[0]
    with tempfile.TemporaryDirectory() as tmp:
        for stage in spec["stages"]:
            proj = save_projector(prof, spec["key"], clip, d, dev, tmp) if stage == 2 else ""
            row = run_setting(prof, spec["key"], S, stage, s, clip, d, dev, proj, set(filter(None, a.fake_oom.split(","))))
            print("RESULT " + json.dumps(row), flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, fp32, B = 4, on the CPU (or --device): the same code path, under a minute")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"JSON results, rewritten after every setting (default {DEFAULT_OUT})")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--backbones", default=None, help="comma-separated BACKBONES keys (default: openai-l14,openai-l14-336; tiny: tiny)")
    ap.add_argument("--stages", default="1,2", help="DCR stages to measure")
    ap.add_argument("--settings", default=None, help="comma-separated setting names to run (default: all), e.g. straightforward,ours:c16+ckpt")
    ap.add_argument("--budget-s", type=float, default=200, help="start no setting after this many seconds (the rest is recorded as skipped)")
    ap.add_argument("--total-s", type=float, default=285, help="the torch.compile run is killed so that the check ends within this many seconds")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--compile-min-s", type=float, default=60, help="try torch.compile only with this many seconds of --total-s left")
    ap.add_argument("--compile-timeout", type=float, default=None, help="kill the torch.compile run after this many seconds (default: what --total-s leaves)")
    ap.add_argument("--fit-gb", type=float, default=76.0, help="fits an 80 GB A100 when the allocated peak (GiB) is at most this: its "
                    "79.2 GiB usable less ~3 GiB for the CUDA context, workspaces and fragmentation")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default); 1 keeps tiny CPU timings steady on a busy machine")
    ap.add_argument("--fake-oom", default="", help=argparse.SUPPRESS)  # testing: these settings raise an out-of-memory error
    ap.add_argument("--compile-on-cpu", action="store_true", help=argparse.SUPPRESS)  # testing: run the compile child on the CPU too
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)  # the compile child (see `isolated`)
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    warnings.filterwarnings("ignore")  # deterministic-algorithm and init warnings would bury the table
    import torch
    dev = a.device or ("cpu" if a.tiny else "cuda")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check.py: this check needs a CUDA GPU, and torch.cuda.is_available() is False here. "
              "For the same code path on the CPU with tiny shapes, run: python benchmarks/gpu_check.py --tiny", file=sys.stderr)
        return 2
    os.environ.setdefault("DCR_NB_ROOT", str(ROOT))
    if a.threads: torch.set_num_threads(a.threads)  # OpenMP threads that compete with other work make CPU steps 10x slower and erratic
    torch.use_deterministic_algorithms(True, warn_only=True)  # as dcr_nb.train.train sets it for every run
    if a._one: return one(a, dev)
    prof = profiles()[1 if a.tiny else 0]
    if a.backbones: prof = dataclasses.replace(prof, backbones=tuple(a.backbones.split(",")))
    stages = [int(s) for s in a.stages.split(",")]
    wanted = None if a.settings is None else set(a.settings.split(","))
    cuda = dev.startswith("cuda")
    from dcr_nb.evaluate import model_image_size
    d = build_diffusion(prof, dev)
    meta = dict(profile=prof.name, tiny=a.tiny, device=dev, device_name=torch.cuda.get_device_name(dev) if cuda else platform.processor() or platform.machine(),
                device_memory_gb=torch.cuda.get_device_properties(dev).total_memory / GIB if cuda else None,
                torch=torch.__version__, python=platform.python_version(), batch_per_gpu=prof.batch, warmup_steps=prof.warmup, timed_steps=prof.steps,
                precision="bf16 autocast with fp32 weights (accelerate mixed_precision=bf16, as the paper profile trains)" if cuda else "fp32",
                attention=("PyTorch SDPA (torch.nn.functional.scaled_dot_product_attention): diffusers "
                           + "/".join(sorted({type(p).__name__ for p in d.unet.attn_processors.values()}))
                           + " in the UNet and VAE, nn.MultiheadAttention in the open_clip ViT"),
                sdpa_backends=dict(flash=torch.backends.cuda.flash_sdp_enabled(), mem_efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
                                   math=torch.backends.cuda.math_sdp_enabled()) if cuda else None,
                deterministic_algorithms=True, memory=memory_method(dev), fit_gb=a.fit_gb,
                unet_params_m=n_params(d.unet) / 1e6, vae_params_m=n_params(d.codec.vae) / 1e6, text_params_m=n_params(d.text.module) / 1e6,
                assumption=f"projection: perfect data-parallel scaling over {PAPER['gpus']} GPUs, no dataloader cost, no gradient all-reduce "
                           f"cost (the trainable projector / LoRA adapters are small); each optimizer step = {PAPER['grad_accum']} micro-steps of "
                           f"B = {PAPER['batch']} per GPU, each timed with its own optimizer update (an upper bound by one small AdamW step)",
                recipe=dict(stage1_steps=PAPER["stage1_steps"], stage2_steps=PAPER["stage2_steps"], gpus=PAPER["gpus"], grad_accum=PAPER["grad_accum"]),
                build_s=time.perf_counter() - t_start, budget_s=a.budget_s, total_limit_s=a.total_s, complete=False)
    if cuda: meta["diffusion_side_gb"] = torch.cuda.memory_allocated() / GIB  # UNet + VAE weights and the empty-prompt states
    rows, flops, clip_info, first_rows = [], {}, {}, None  # first_rows: the first backbone's, which order and prune the larger ones
    out = Path(a.out); out = out if out.is_absolute() else Path.cwd() / out
    out.parent.mkdir(parents=True, exist_ok=True)
    def save(picks=None):  # after every setting, so a run cut short still leaves its rows
        out.write_text(json.dumps(dict(meta=meta, backbones=clip_info, flops=flops, rows=rows, picks=picks), indent=1, default=str))
    def add(row):
        rows.append(row); save()
        print(f"  {row['backbone']} stage {row['stage']} {row['setting']}: {row['status']} {fmt(row.get('step_ms'), '.0f')} ms "
              f"{fmt(row.get('peak_gb'), '.2f')} GB", file=sys.stderr, flush=True)
    elapsed = lambda: time.perf_counter() - t_start
    fake = set(filter(None, a.fake_oom.split(",")))
    settings = [s for s in grid(prof.chunks) if wanted is None or s.name in wanted]
    held = {}  # backbone -> its CLIP model; on a GPU only the one in use is kept
    def clip_of(key):
        if key not in held:
            if cuda: held.clear(); free(dev)
            t0 = time.perf_counter(); held[key] = build_clip(key, dev)
            clip_info.setdefault(key, dict(image_size=model_image_size(held[key])[0], params_m=n_params(held[key]) / 1e6,
                                           build_s=time.perf_counter() - t0))
        return held[key]
    with tempfile.TemporaryDirectory() as tmp:
        for key in prof.backbones:
            clip = None; clip = clip_of(key); S = clip_info[key]["image_size"]  # (the old one freed first)
            try: flops[key] = denoiser_flops(prof, d, S)
            except Exception as e: flops[key] = None; clip_info[key]["flops_error"] = f"{type(e).__name__}: {e}"
            for stage in stages:
                proj = save_projector(prof, key, clip, d, dev, tmp) if stage == 2 else ""
                order = settings
                if first_rows is not None:  # fastest at the first backbone first, so a short budget still measures the likely picks
                    rank = {r["setting"]: (r["status"] != "ok", r.get("step_ms") or 0) for r in first_rows if r["stage"] == stage}
                    order = sorted(settings, key=lambda s: rank.get(s.name, (True, 0)))
                for s in order:
                    prev = next((r for r in first_rows or [] if r["stage"] == stage and r["setting"] == s.name and r["status"] == "oom"), None)
                    if prev is not None and prev["image_size"] <= S: add(skipped(key, S, stage, s, f"OOM with {prev['backbone']} at {prev['image_size']} px; {S} px needs at least as much"))
                    elif elapsed() > a.budget_s: add(skipped(key, S, stage, s, f"time budget (--budget-s {a.budget_s:g})"))
                    else: add(run_setting(prof, key, S, stage, s, clip, d, dev, proj, fake))
            if first_rows is None: first_rows = [r for r in rows if r["backbone"] == key]
    clip = None; held.clear(); free(dev)
    # torch.compile last (the most expensive, and its time unknown: a separate process, killed at --total-s), on the setting each backbone would pick
    for key in prof.backbones:
        pick = pick_and_project(rows, [key], stages, a.fit_gb, {}).get(key, {}).get("dcr")
        if pick is None: continue
        s, S = Setting(pick["fast"], pick["chunk_size"], pick["checkpoint"], compile=True), clip_info[key]["image_size"]
        left = a.total_s - elapsed() - 5  # 5 s to report
        timeout = left if a.compile_timeout is None else min(left, a.compile_timeout)
        why = ("--no-compile" if a.no_compile else
               "CPU: inductor's C++ compile takes minutes on a small CPU and says nothing about the GPU" if not cuda and not a.compile_on_cpu else
               f"time: {max(left, 0):.0f} s left of --total-s {a.total_s:g}, under --compile-min-s {a.compile_min_s:g}" if left < a.compile_min_s else None)
        for row in ([skipped(key, S, st, s, why) for st in stages] if why else isolated(a, key, S, stages, s, timeout)): add(row)
    picks = pick_and_project(rows, prof.backbones, stages, a.fit_gb, flops)
    meta.update(total_s=elapsed(), complete=True); save(picks)
    name = meta["device_name"]
    print(f"# GPU check of the paper profile ({prof.name}), {name}, torch {torch.__version__}, B = {prof.batch} per GPU, "
          f"{meta['precision']}\n# attention: {meta['attention']}\n# memory: {meta['memory']}\n# step time: median of "
          f"{prof.steps} timed step(s) after {prof.warmup} warm-up step(s) (forward + backward + optimizer step)\n")
    print(table(rows, a.fit_gb))
    print(report(picks, a.fit_gb, name))
    print(f"\n{meta['assumption']}.\ntotal {meta['total_s']:.0f} s\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
