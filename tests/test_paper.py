"""The paper profile on tiny fakes (CPU): the preflight, its command line, the shard reader, both DCR stages and
the evaluation on a complete fake layout, and the multi-process path through `accelerate launch`."""
import re, dataclasses, json, os, socket, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from dcr_nb.paper import (PaperInputs, PaperInputsMissing, PaperStageConfig, PaperEvaluateConfig, preflight,
                          shard_batches, shard_share, run_paper_stage, run_paper_evaluate, SD_FILES)
from dcr_nb.fixtures import fake_paper_inputs
from dcr_nb.data import MMVP_IMAGES, MMVP_CATEGORIES
from dcr_nb.readers import expand_shards

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> PaperInputs:
    "A complete paper layout of tiny random models and data."
    return fake_paper_inputs(tmp_path_factory.mktemp("paper"))


def empty_inputs(d: Path) -> PaperInputs:
    return PaperInputs(model="openai-l14", pretrained="openai", cache_dir=str(d / "hf"), sd=str(d / "sd21"),
                       shards=str(d / "cc3m" / "{00000..00002}.tar"), mmvp=str(d / "MMVP_VLM"), d_ability=str(d / "classes"))


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dcr_nb.paper", *args], capture_output=True, text=True, timeout=120, **kw)


def test_preflight_names_every_missing_path(tmp_path):
    with pytest.raises(PaperInputsMissing) as e: preflight(**empty_inputs(tmp_path).to_dict())
    msg = str(e.value)
    hub = tmp_path / "hf" / "models--timm--vit_large_patch14_clip_224.openai" / "snapshots" / "<revision>" / "open_clip_model.safetensors"
    for p in (hub, tmp_path / "sd21", tmp_path / "cc3m", tmp_path / "MMVP_VLM", tmp_path / "classes"): assert str(p) in msg, p
    assert len(e.value.missing) == 5 and isinstance(e.value, FileNotFoundError)
    # once the folders exist, each missing file inside them is named
    for d in ("sd21", "cc3m", "MMVP_VLM", "classes"): (tmp_path / d).mkdir()
    with pytest.raises(PaperInputsMissing) as e: preflight(**empty_inputs(tmp_path).to_dict())
    msg = str(e.value)
    for alts in SD_FILES: assert str(tmp_path / "sd21" / alts[0]) in msg, alts
    for s in ("00000", "00001", "00002"): assert str(tmp_path / "cc3m" / f"{s}.tar") in msg
    for p in (tmp_path / "MMVP_VLM" / "Questions.csv", tmp_path / "MMVP_VLM" / MMVP_IMAGES, tmp_path / "classes" / "<class>"): assert str(p) in msg
    assert len(e.value.missing) == 1 + len(SD_FILES) + 3 + 2 + 1


def test_preflight_checks_a_local_checkpoint_file(tmp_path):
    with pytest.raises(PaperInputsMissing, match=str(tmp_path / "vit.pt")): preflight(model="openai-l14", pretrained=str(tmp_path / "vit.pt"))
    (tmp_path / "vit.pt").write_bytes(b"x")
    assert preflight(model="openai-l14", pretrained=str(tmp_path / "vit.pt"))["clip"].startswith("openai-l14")


def test_fake_layout_passes_and_each_removed_file_is_named(fake):
    s = preflight(**fake.to_dict())
    assert s["shards"] == "4 shards" and s["mmvp"] == "9 pairs" and s["d_ability"] == "2 classes"
    root = Path(fake.sd).parent
    for rel in ("sd/vae/diffusion_pytorch_model.safetensors", "sd/tokenizer/vocab.json", "cc3m/00003.tar",
                f"MMVP_VLM/{MMVP_IMAGES}/Texts/15.jpg", "clip/tiny.pt"):
        p = root / rel; data = p.read_bytes(); p.unlink()
        try:
            with pytest.raises(PaperInputsMissing, match=str(p).replace("(", r"\(")): preflight(**fake.to_dict())
        finally: p.write_bytes(data)
    preflight(**fake.to_dict())


def test_cli_exit_codes(tmp_path, fake):
    import yaml
    env = {**os.environ, "DCR_NB_ROOT": str(ROOT)}
    dvc_deps = lambda inputs: {k: os.path.relpath(v, ROOT) if k in ("sd", "mmvp") else v for k, v in inputs.to_dict().items()}
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump({"inputs": dvc_deps(empty_inputs(tmp_path))}))
    r = run_cli("preflight", str(tmp_path / "missing.yaml"), env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"run `make paper-inputs` first (python -m dcr_nb.paper_fetch {tmp_path / 'missing.yaml'})"), r.stderr  # the one command first
    for p in ("cc3m", "classes"): assert str(tmp_path / p) in r.stderr
    for p in ("sd21", "MMVP_VLM"): assert os.path.relpath(tmp_path / p, ROOT) in r.stderr
    # paper/dvc.yaml tracks sd and mmvp as dependencies from paper/ (../<path>): absolute paths are refused, naming the relative one
    (tmp_path / "absolute.yaml").write_text(yaml.safe_dump({"inputs": fake.to_dict()}))
    r = run_cli("preflight", str(tmp_path / "absolute.yaml"), env=env)
    assert r.returncode == 1 and f"inputs.sd is absolute ({fake.sd}); write it from the checkout's root, as {os.path.relpath(fake.sd, ROOT)}" in r.stderr, r.stderr
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({"inputs": dvc_deps(fake)}))
    r = run_cli("preflight", str(tmp_path / "ok.yaml"), env=env)
    assert r.returncode == 0 and r.stdout.startswith("paper inputs ok: ") and len(r.stdout.strip().splitlines()) == 1, (r.stdout, r.stderr)


def test_main_in_process(tmp_path, capsys):
    "The same entry point in-process: a missing params file, the repo's paper/params.yaml (no weights here), a bad command."
    from dcr_nb.paper import main, read_inputs
    assert main(["preflight", str(tmp_path / "nowhere.yaml")]) == 1 and "no params file" in capsys.readouterr().err
    cfg = read_inputs()  # the committed paper/params.yaml, the default
    assert (cfg.model, cfg.pretrained) == ("openai-l14", "openai")
    assert main(["preflight"]) == 1 and str(ROOT / "paper/inputs/stable-diffusion-2-1-base") in capsys.readouterr().err
    assert main(["bogus"]) == 2


def test_shard_batches_deterministic_disjoint_resumable(fake, tmp_path):
    B, paths = 3, expand_shards(fake.shards)
    counts = tmp_path / "counts"
    gb = shard_batches(fake.shards, B, seed=7, size=32, counts_dir=counts)
    run = {(r, k): gb(k, r, 2)["captions"] for r in (0, 1) for k in range(6)}  # 18 samples per rank: past epoch 0's 12
    for r in (0, 1):  # epoch 0 of a rank is its share of the shards, each sample once
        share = {Path(p).stem for p in shard_share(paths, 7, 0, r, 2)}
        first = [c for k in range(4) for c in run[(r, k)]]
        assert {c.split()[1][:5] for c in first} == share and len(set(first)) == 12
    e0 = [set(c for k in range(4) for c in run[(r, k)]) for r in (0, 1)]
    assert not (e0[0] & e0[1])  # disjoint within the epoch
    assert len(list(counts.glob("*.json"))) == 4  # every shard was read to its end once
    # same (seed, k, rank, world): same batch, from a fresh reader with or without the count records
    for cd in (counts, None):
        again = shard_batches(fake.shards, B, seed=7, size=32, counts_dir=cd)
        for r, k in ((1, 5), (0, 2), (0, 5), (1, 0)):
            b = again(k, r, 2)
            assert b["captions"] == run[(r, k)] and b["k"] == k and b["images"].shape == (B, 3, 32, 32)
    assert torch.equal(again(4, 0, 2)["images"], gb(4, 0, 2)["images"])
    assert shard_batches(fake.shards, B, seed=8, size=32)(0, 0, 1)["captions"] != shard_batches(fake.shards, B, seed=7, size=32)(0, 0, 1)["captions"]


def test_paper_stages_and_evaluation_end_to_end(fake, tmp_path):
    common = dict(model="tiny", clip=fake.pretrained, denoiser=fake.sd, data=fake.shards, objective="dcr", steps=2, batch_size=2,
                  ckpt_every=1, lr=1e-3, grad_accum=2)
    t0 = time.perf_counter()
    proj = run_paper_stage(PaperStageConfig(stage=1, out=str(tmp_path / "s1"), train_dir=str(tmp_path / "t1"), **common))
    cfg2 = PaperStageConfig(stage=2, lora_r=4, projector=str(proj), out=str(tmp_path / "s2"), train_dir=str(tmp_path / "t2"), **common)
    enc = run_paper_stage(cfg2)
    assert proj.name == "projector.pt" and enc.name == "encoder.pt"
    # resuming a finished stage trains nothing more and writes the same encoder
    assert torch.equal(torch.load(run_paper_stage(cfg2))["visual.proj"], torch.load(enc)["visual.proj"])
    m = run_paper_evaluate(PaperEvaluateConfig(name="dcr", model="tiny", encoder=str(enc), made_by="stage2@dcr", mmvp=fake.mmvp,
                                               d_ability=fake.d_ability, out=str(tmp_path / "ev")))
    assert list(m["mmvp"]) == ["mean", *MMVP_CATEGORIES] and "cluster_nmi" in m["d_ability"]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == json.loads(json.dumps(m))
    print(f"stages + evaluation: {time.perf_counter() - t0:.1f} s")


def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_processes(fake, tmp_path):
    "The dvc.yaml command shape, on 2 CPU processes (gloo): both ranks train on disjoint shards, rank 0's notebook and progress are kept."
    out, train_dir = tmp_path / "stage1", tmp_path / "train"
    out.mkdir()
    import yaml  # the paper's parameters file, on the fake inputs: what `paper/dvc.yaml`'s stage1 reads
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump({"inputs": {"model": "tiny", "pretrained": str(fake.pretrained), "cache_dir": "", "sd": str(fake.sd), "shards": str(fake.shards)},
                                     "dcr": {"schedule": "constant", "batch_size": 2, "grad_accum": 2, "rank_data": "disjoint"},  # shards split by rank (fixed mode's)
                                     "stage1": {"steps": 2, "ckpt_every": 1, "warmup_steps": 4, "lr": 0.001},
                                     "objectives": {"dcr": {"objective": "dcr", "tau": 0.1, "lam": 0.0, "num_negatives": 0}}}))
    reads = next(re.search(r'-p reads "([^"]*)"', st["do"]["cmd"])[1] for n, st in yaml.safe_load((ROOT / "paper/dvc.yaml").read_text())["stages"].items() if n == "stage1")
    params = dict(stage=1, params=str(pfile), reads=reads.replace("${key}", "dcr"), out=str(out), train_dir=str(train_dir))
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "dcr_nb.stage", str(ROOT / "nbs/stages/paper_train.ipynb"), str(out / "paper_train.ipynb")]
    for k, v in params.items(): cmd += ["-p", k, str(v)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "DCR_NB_ROOT": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"accelerate launch, 2 processes: {time.perf_counter() - t0:.1f} s")
    assert (out / "projector.pt").is_file() and (out / "train_summary.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["paper_train.ipynb", "projector.pt", "train_summary.json"]  # no rank-1 copy
    import nbformat
    text = "".join(o.get("text", "") for c in nbformat.read(out / "paper_train.ipynb", 4).cells for o in c.get("outputs", []))
    assert f"wrote {out / 'projector.pt'}" in text
    progress = [l for l in r.stderr.splitlines() if "step 2/2 (100%)" in l]   # rank 0's lines only, relayed once
    assert len(progress) == 1 and progress[0].startswith("[stage1] ") and "done in" in progress[0], r.stderr[-3000:]
    assert "without encryption" not in r.stderr, r.stderr[-3000:]
    # 2 updates x 2 micro-batches x 2 images = 8 samples per rank: each rank read one whole shard (6) of its own share,
    # so two count records exist; a single process would have finished only one shard.
    # The schedule moves once per update, not once per process: after updates 1 and 2 of a 4-step warmup the logged
    # learning rates are 0.5 and 0.75 x lr (accelerate's default would step it twice per update: 0.75 and 1.0).
    lrs = (train_dir / "live" / "plots" / "metrics" / "train" / "lr.tsv").read_text().split("\n")[1:]
    assert [float(l.split("\t")[-1]) for l in lrs if l] == pytest.approx([0.0005, 0.00075]), lrs
    recs = [json.loads(p.read_text()) for p in (train_dir / "shard_counts").glob("*.json")]
    shares = [set(shard_share(expand_shards(fake.shards), 0, 0, r, 2)) for r in (0, 1)]
    assert len(recs) == 2 and all(any(x["path"] in s for x in recs) for s in shares), recs
