"""What sampled negatives cost in quality: DCR with K sampled negatives per anchor, against all B-1.

    make repro                                   # the default pipeline first (this reuses its data and the shipped world)
    .venv/bin/python benchmarks/negatives.py     # K = 3 and 7 (all at B = 8); about 6 minutes on a 2-core CPU
    .venv/bin/python benchmarks/negatives.py --ks 1,3,5 --out outputs/negatives

For each K it runs DCR stage 1 and stage 2 with exactly the default pipeline's settings for the `dcr`
objective and its first seed (params.yaml: `dcr`, `stage1`, `stage2`, `objectives.dcr`, `seeds`) except
`num_negatives = K`, then the `evaluate` stage's evaluation, through the same library functions the stage
notebooks call. It prints one table, with the pipeline's own `baseline-<seed>` and `dcr-<seed>` rows read from outputs/evaluate,
and writes it to `<out>/negatives.json` and `<out>/negatives.md`. Runs resume: a finished K is not redone
while its inputs (the parameters above, the pipeline's CLIP, denoiser and data, the dcr_nb code) are the
same; after any change it is redone (the trainer sets its old checkpoints aside by the same rule).
The throughput side of K (denoiser calls B*(K+2) instead of B*(B+1)) is measured by benchmarks/dcr_step.py.
"""
from __future__ import annotations
import argparse, json, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage_config(p: dict, stage: int, k: int, out: Path):
    "The `DCRStageConfig` that dvc.yaml builds for stage<stage>@dcr-<first seed>, with num_negatives = k and outputs under `out`."
    from dcr_nb.dcr_stages import DCRStageConfig
    s, o, dcr = p[f"stage{stage}"], p["objectives"]["dcr"], p["dcr"]
    return DCRStageConfig(
        stage=stage, objective=o["objective"], target=dcr["target"], tau=o["tau"], lam=o["lam"], num_negatives=k,
        chunk_size=dcr["chunk_size"], fast=dcr["fast"], checkpoint=dcr["checkpoint"], probe_every=s["probe_every"],
        lora_r=s["lora_r"] if stage == 2 else 0, lora_alpha=s["lora_alpha"] if stage == 2 else 16.0,
        lora_dropout=s["lora_dropout"] if stage == 2 else 0.0, hflip=dcr["hflip"], vflip=dcr["vflip"], model=p["world"]["model"],
        clip=p["world"]["clip"], denoiser=p["world"]["denoiser"],
        projector=str(out / "stage1" / "projector.pt") if stage == 2 else "", steps=s["steps"], batch_size=s["batch_size"],
        grad_accum=dcr["grad_accum"], lr=s["lr"], weight_decay=dcr["weight_decay"], warmup_steps=s["warmup_steps"], schedule=dcr["schedule"],
        grad_clip=dcr["grad_clip"], ckpt_every=s["ckpt_every"], seed=p["seeds"][0], mixed_precision=dcr["mixed_precision"],
        data=p["prepare"]["out"], out=str(out / f"stage{stage}"), train_dir=str(out / "train" / f"stage{stage}"))


def run_k(p: dict, k: int, out: Path) -> dict:
    "Stage 1, stage 2 and evaluation with k negatives; returns the metrics (and the training wall times)."
    from dcr_nb.compare import EvaluateConfig, run_evaluate
    from dcr_nb.dcr_stages import run_dcr_stage
    from dcr_nb.core import file_md5, package_code
    done, d = out / "metrics.json", p["world"]["denoiser"]
    inputs = {"k": k, "params": {s: p[s] for s in ("dcr", "stage1", "stage2", "evaluate", "world", "prepare", "seeds")},
              "objective": p["objectives"]["dcr"], "code": package_code(),
              "files": {f: file_md5(ROOT / f) for f in (p["world"]["clip"], f"{d}/unet/diffusion_pytorch_model.safetensors", f"{d}/scheduler/scheduler_config.json",
                                                        f"{p['prepare']['out']}/scenes.npz", f"{p['prepare']['out']}/eval_test.npz")}}
    if done.exists():
        old = json.loads(done.read_text())
        if old.get("inputs") == inputs: return old
        print(f"K = {k}: {done} is of other inputs; running it again", flush=True)
    times = {}
    for stage in (1, 2):
        t0 = time.perf_counter(); run_dcr_stage(stage_config(p, stage, k, out)); times[f"stage{stage}_s"] = time.perf_counter() - t0
    e = p["evaluate"]
    m = run_evaluate(EvaluateConfig(name=f"dcr_k{k}", model=p["world"]["model"], encoder=str(out / "stage2" / "encoder.pt"),
                                    made_by=f"stage 2 of negatives.py K={k}", mmvp=f"{p['prepare']['out']}/mmvp", data=p["prepare"]["out"],
                                    n_eval=e["n_eval"], n_probe_train=e["n_probe_train"], n_features=e["n_features"], n_attributes=e["n_attributes"], reference=p["world"]["clip"],
                                    batch_size=e["batch_size"], seed=p["seeds"][0], out=str(out / "evaluate")))
    m = {**m, **times, "inputs": inputs}
    done.write_text(json.dumps(m, indent=1))
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="3,7", help="comma-separated numbers of sampled negatives (each < the DCR batch size)")
    ap.add_argument("--out", default="outputs/negatives", help="output folder (one subfolder per K)")
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args(argv)
    import yaml
    os.environ.setdefault("DCR_NB_ROOT", str(ROOT))
    p = yaml.safe_load((ROOT / a.params).read_text())
    try: ks = [int(x) for x in a.ks.split(",") if x.strip()]
    except ValueError: sys.exit(f"--ks must be comma-separated integers, got {a.ks!r}")
    bs = min(p["stage1"]["batch_size"], p["stage2"]["batch_size"])
    if not ks or any(k < 1 or k > bs - 1 for k in ks): sys.exit(f"--ks: each K must be between 1 and batch_size - 1 = {bs - 1}, got {a.ks!r}")
    ev = ROOT / "outputs" / "evaluate"
    s0, kp = p["seeds"][0], p["objectives"]["dcr"]["num_negatives"]
    missing = [str(ev / n / "metrics.json") for n in (f"baseline-{s0}", f"dcr-{s0}") if not (ev / n / "metrics.json").exists()]
    if missing: sys.exit("run the default pipeline first (make repro): missing " + ", ".join(missing))
    rows = {"baseline": json.loads((ev / f"baseline-{s0}" / "metrics.json").read_text()),
            f"dcr (pipeline), K = {kp or bs - 1}": json.loads((ev / f"dcr-{s0}" / "metrics.json").read_text())}
    out = ROOT / a.out
    for k in ks:
        print(f"== K = {k}", flush=True)
        rows[f"dcr, K = {k}"] = run_k(p, k, out / f"k{k}")
    from dcr_nb.compare import comparison_table
    table = comparison_table({n: {"mmvp": m["mmvp"], "d_ability": m["d_ability"]} for n, m in rows.items()})
    cols = ["MMVP mean"] + [c for c in table.columns if c in ("cluster_nmi", "cluster_acc", "zero_shot_acc", "linear_probe_acc")]
    md = table[cols].to_markdown()
    (out / "negatives.md").write_text(md + "\n"); (out / "negatives.json").write_text(json.dumps(table.to_dict(orient="index"), indent=1))
    print(md)
    for k in ks: print(f"K = {k}: stage 1 {rows[f'dcr, K = {k}'].get('stage1_s', float('nan')):.0f} s, stage 2 {rows[f'dcr, K = {k}'].get('stage2_s', float('nan')):.0f} s (the run that made them)")


if __name__ == "__main__":
    main()
