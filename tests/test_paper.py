"""The paper profile on tiny fakes (CPU): the preflight, its command line, the shard reader (with and without worker
processes), both DCR stages and the evaluation on a complete fake layout (OpenAI-style and SigLIP-style backbones),
released encoders, the compile key, the multi-process path through `accelerate launch`, and Table 1 as one
`dvc --cd paper repro` of two backbones in both fidelity modes."""
import re, dataclasses, json, os, shutil, socket, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from dcr_nb.paper import PaperStageConfig, run_paper_stage, build_paper_task
from dcr_nb.paper_inputs import PaperInputs, PaperInputsMissing, preflight, SD_FILES, STANDIN_SIGLIP
from dcr_nb.paper_data import shard_batches, shard_share
from dcr_nb.paper_evaluate import PaperEvaluateConfig, run_paper_evaluate
from dcr_nb.fixtures import fake_paper_inputs, fake_paper_params
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


def params_file(path: Path, inputs: PaperInputs, **more) -> Path:
    "A paper params file of `inputs` (its model and pretrained as the one backbone), sd and mmvp relative to the root as paper/dvc.yaml needs."
    import yaml
    d = {k: os.path.relpath(v, ROOT) if k in ("sd", "mmvp") else v for k, v in inputs.to_dict().items() if k not in ("model", "pretrained")}
    path.write_text(yaml.safe_dump({"inputs": d, "backbones": {inputs.model: {"pretrained": inputs.pretrained}}, **more}, sort_keys=False)); return path


def test_cli_exit_codes(tmp_path, fake):
    import yaml
    env = {**os.environ, "DCR_NB_ROOT": str(ROOT)}
    r = run_cli("preflight", str(params_file(tmp_path / "missing.yaml", empty_inputs(tmp_path))), env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"run `make paper-inputs` first (python -m dcr_nb.paper_fetch {tmp_path / 'missing.yaml'})"), r.stderr  # the one command first
    for p in ("cc3m", "classes"): assert str(tmp_path / p) in r.stderr
    for p in ("sd21", "MMVP_VLM"): assert os.path.relpath(tmp_path / p, ROOT) in r.stderr
    # paper/dvc.yaml tracks sd and mmvp as dependencies from paper/ (../<path>): absolute paths are refused, naming the relative one
    (tmp_path / "absolute.yaml").write_text(yaml.safe_dump({"inputs": {k: v for k, v in fake.to_dict().items() if k not in ("model", "pretrained")},
                                                            "backbones": {"tiny": {"pretrained": fake.pretrained}}}))
    r = run_cli("preflight", str(tmp_path / "absolute.yaml"), env=env)
    assert r.returncode == 1 and f"inputs.sd is absolute ({fake.sd}); write it from the checkout's root, as {os.path.relpath(fake.sd, ROOT)}" in r.stderr, r.stderr
    # an old params file (the CLIP under inputs) is refused with where it moved
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"inputs": fake.to_dict()}))
    r = run_cli("preflight", str(tmp_path / "old.yaml"), env=env)
    assert r.returncode == 1 and "inputs.model moved to `backbones`" in r.stderr, r.stderr
    r = run_cli("preflight", str(params_file(tmp_path / "ok.yaml", fake, dcr={"fidelity": "fixed"})), env=env)
    assert r.returncode == 0 and r.stdout.startswith("paper inputs ok: ") and len(r.stdout.strip().splitlines()) == 1, (r.stdout, r.stderr)
    assert "warning: tiny: dcr: fidelity = 'fixed' (released: 'reference')" in r.stderr, r.stderr  # a departure is flagged, not refused


def test_main_in_process(tmp_path, capsys):
    "The same entry point in-process: a missing params file, the repo's paper/params.yaml (no weights here), a bad command."
    from dcr_nb.paper import main
    from dcr_nb.paper_inputs import read_inputs
    assert main(["preflight", str(tmp_path / "nowhere.yaml")]) == 1 and "no params file" in capsys.readouterr().err
    cfgs = read_inputs()  # the committed paper/params.yaml, the default: one backbone
    assert [(c.model, c.pretrained) for c in cfgs] == [("openai-l14", "openai")]
    assert main(["preflight"]) == 1 and str(ROOT / "paper/inputs/stable-diffusion-2-1-base") in capsys.readouterr().err
    assert main(["bogus"]) == 2


def test_preflight_checks_every_backbone_and_released_encoder(tmp_path, fake):
    "Each backbone's weights and each released encoder are checked; one error names every missing one; the cost and departures are flagged."
    from dcr_nb.paper import main
    missing = {"tiny": {"pretrained": fake.pretrained}, STANDIN_SIGLIP: {"pretrained": str(tmp_path / "siglip.pt")}}
    rel = {"diva": {"backbone": "tiny", "path": os.path.relpath(tmp_path / "diva.pth", ROOT)}}
    f = params_file(tmp_path / "p.yaml", fake, dcr={"fidelity": "fixed"}, released=rel)
    import yaml
    d = yaml.safe_load(f.read_text()); d["backbones"] = missing; f.write_text(yaml.safe_dump(d, sort_keys=False))
    r = run_cli("preflight", str(f), env={**os.environ, "DCR_NB_ROOT": str(ROOT)})
    assert r.returncode == 1 and str(tmp_path / "siglip.pt") in r.stderr and str(tmp_path / "diva.pth") in r.stderr, r.stderr
    from dcr_nb.encoder import create_encoder, save_encoder
    save_encoder(create_encoder(STANDIN_SIGLIP, random_init=True), tmp_path / "siglip.pt")
    torch.save(torch.load(fake.pretrained), tmp_path / "diva.pth")
    r = run_cli("preflight", str(f), env={**os.environ, "DCR_NB_ROOT": str(ROOT)})
    assert r.returncode == 0 and f"backbones tiny ({fake.pretrained}), {STANDIN_SIGLIP} ({tmp_path / 'siglip.pt'})" in r.stdout and "released diva (tiny)" in r.stdout, r.stdout + r.stderr


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


def test_worker_processes_give_the_same_batches(fake, tmp_path):
    "Decoding in 2 worker processes: the same batches as in the training process (0 workers), in order, and after a resume."
    import multiprocessing
    plain = shard_batches(fake.shards, 4, seed=3, size=32, counts_dir=tmp_path / "counts", random_crop=True)
    ref = {(r, k): plain(k, r, w) for r, w in ((0, 1), (1, 2)) for k in range(8)}  # 32 samples: past epoch 0 (24, and 12 per rank of 2)
    par = shard_batches(fake.shards, 4, seed=3, size=32, workers=2, random_crop=True)
    for (r, k), b in ref.items():
        got = par(k, r, 1 if r == 0 else 2)
        assert got["captions"] == b["captions"] and torch.equal(got["images"], b["images"]), (r, k)
    for cd in (tmp_path / "counts", None):  # a resume at batch 5: with the count records (shards skipped unread) and without
        again = shard_batches(fake.shards, 4, seed=3, size=32, counts_dir=cd, workers=2, random_crop=True)
        for k in (5, 6, 2):
            got = again(k, 0, 1); assert got["captions"] == ref[(0, k)]["captions"] and torch.equal(got["images"], ref[(0, k)]["images"]), (cd, k)
    del par, again; import gc; gc.collect()
    assert not multiprocessing.active_children()  # the workers stop with their stream
    with pytest.raises(ValueError, match="workers must be >= 0"): shard_batches(fake.shards, 4, seed=3, workers=-1)


def test_a_failing_or_dead_worker_stops_the_stream(fake, monkeypatch):
    "A worker's error stops training with it, naming the shard; a worker that dies (killed) stops it too, instead of a hang."
    import signal, multiprocessing
    from dcr_nb.readers import TarShardDataset
    orig = TarShardDataset.__iter__
    def broken(self):
        if self.shards[0].endswith("00002.tar"): raise OSError("disk on fire")
        return orig(self)
    monkeypatch.setattr(TarShardDataset, "__iter__", broken)  # the workers are forked: they inherit it
    gb = shard_batches(fake.shards, 4, seed=0, size=32, workers=2)
    with pytest.raises(RuntimeError, match=r"data worker \d failed on .*00002.tar: OSError: disk on fire"): [gb(k, 0, 1) for k in range(12)]
    monkeypatch.setattr(TarShardDataset, "__iter__", orig)
    gb = shard_batches(fake.shards, 4, seed=0, size=32, workers=2)
    gb(0, 0, 1)
    os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"data worker \d of process 0 died"): [gb(k, 0, 1) for k in range(1, 12)]


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


def test_siglip_rows_end_to_end(fake, tmp_path):
    "A SigLIP-layout backbone (the stand-in): both stages, the SiglipVisionModel export of stage 2, the evaluation; the folder is the same function."
    from dcr_nb.encoder import create_encoder, save_encoder
    from dcr_nb.hf import hf_differences
    from transformers import SiglipVisionModel
    torch.manual_seed(0); w = save_encoder(create_encoder(STANDIN_SIGLIP, random_init=True), tmp_path / "siglip.pt")
    common = dict(model=STANDIN_SIGLIP, clip=str(w), denoiser=fake.sd, data=fake.shards, objective="dcr", steps=1, batch_size=2, ckpt_every=1, lr=1e-3)
    proj = run_paper_stage(PaperStageConfig(stage=1, out=str(tmp_path / "s1"), train_dir=str(tmp_path / "t1"), **common))
    enc = run_paper_stage(PaperStageConfig(stage=2, lora_r=4, projector=str(proj), out=str(tmp_path / "s2"), train_dir=str(tmp_path / "t2"), **common))
    hf = enc.parent / "hf"
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["SiglipVisionModel"]
    _, info = SiglipVisionModel.from_pretrained(hf, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    trained = create_encoder(STANDIN_SIGLIP, pretrained=str(enc)).eval()
    assert max(hf_differences(trained, hf, torch.rand(2, 3, 32, 32)).values()) < 1e-5
    m = run_paper_evaluate(PaperEvaluateConfig(name="dcr", model=STANDIN_SIGLIP, encoder=str(enc), made_by="stage2", mmvp=fake.mmvp,
                                               d_ability=fake.d_ability, out=str(tmp_path / "ev")))
    # the exported folder, scored as a released encoder, is the trained encoder
    r = run_paper_evaluate(PaperEvaluateConfig(name="rel", model=STANDIN_SIGLIP, encoder=str(w), released=str(hf), made_by="stage2", mmvp=fake.mmvp,
                                               d_ability=fake.d_ability, out=str(tmp_path / "ev-rel")))
    assert r["mmvp"] == m["mmvp"] and abs(r["d_ability"]["cluster_nmi"] - m["d_ability"]["cluster_nmi"]) < 1e-6


def test_a_tower_without_hugging_face_class_is_exported_as_open_clip_only(fake, tmp_path, monkeypatch, capsys):
    "Decided before training: stage 2 writes encoder.pt and, in hf/, a README saying why there is no Hugging Face folder; it never fails after training."
    import dcr_nb.paper as paper
    monkeypatch.setattr(paper, "hf_export_plan", lambda model: "the image tower is a ModifiedResNet")
    common = dict(model="tiny", clip=fake.pretrained, denoiser=fake.sd, data=fake.shards, objective="dcr", steps=1, batch_size=2, ckpt_every=1, lr=1e-3)
    proj = run_paper_stage(PaperStageConfig(stage=1, out=str(tmp_path / "s1"), train_dir=str(tmp_path / "t1"), **common))
    enc = run_paper_stage(PaperStageConfig(stage=2, lora_r=4, projector=str(proj), out=str(tmp_path / "s2"), train_dir=str(tmp_path / "t2"), **common))
    assert enc.is_file() and sorted(p.name for p in (enc.parent / "hf").iterdir()) == ["README.md"]
    assert "ModifiedResNet" in (enc.parent / "hf" / "README.md").read_text() and "exported as open_clip only" in capsys.readouterr().out


def test_released_state_dict_is_scored_as_its_encoder(fake, tmp_path):
    "A released encoder as a DIVA-style .pth (a whole CLIP state dict, OpenAI's key names) scores exactly as the same weights as a checkpoint."
    ev = dict(model="tiny", made_by="x", mmvp=fake.mmvp, d_ability=fake.d_ability)
    torch.manual_seed(3)
    from dcr_nb.encoder import create_encoder
    other = create_encoder("tiny", random_init=True).state_dict(); torch.save(other, tmp_path / "OpenAI-ViT-tiny.pth")
    mixed = {**torch.load(fake.pretrained), **{k: t for k, t in other.items() if k.startswith("visual.")}}  # its image tower, the base's text tower
    torch.save(mixed, tmp_path / "mixed.pt")
    ref = run_paper_evaluate(PaperEvaluateConfig(name="ref", encoder=str(tmp_path / "mixed.pt"), out=str(tmp_path / "a"), **ev))
    got = run_paper_evaluate(PaperEvaluateConfig(name="diva", encoder=fake.pretrained, released=str(tmp_path / "OpenAI-ViT-tiny.pth"), out=str(tmp_path / "b"), **ev))
    assert got["mmvp"] == ref["mmvp"]
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit tiny's image tower"):
        run_paper_evaluate(PaperEvaluateConfig(name="bad", encoder=fake.pretrained, released=str(tmp_path / "bad.pth"), out=str(tmp_path / "c"), **ev))


def test_compile_key(fake, tmp_path):
    """`compile: true` puts torch.compile on the denoiser's UNet calls; a stage trains to the same projector as without it. On this CPU
    inductor (the default backend, measured on the H200) did not finish compiling the tiny UNet's step in 15 minutes, so the check uses
    aot_eager, which traces and compiles the same graphs (forward and backward) without generating C++."""
    common = dict(model="tiny", clip=fake.pretrained, denoiser=fake.sd, data=fake.shards, objective="dcr", steps=1, batch_size=2, ckpt_every=1,
                  lr=1e-3, fidelity="fixed", fast=False)
    seen = []; compile_ = torch.compile
    torch.compile = lambda fn, **kw: (seen.append(kw), compile_(fn, **kw))[1]  # what the task builder asks torch.compile for
    try: task = build_paper_task(PaperStageConfig(stage=1, compile=True, compile_backend="aot_eager", **common))
    finally: torch.compile = compile_
    assert seen == [{"backend": "aot_eager"}] and type(task.denoise).__name__ == "FastDenoise"
    assert type(build_paper_task(PaperStageConfig(stage=1, **common)).denoise).__name__ != "FastDenoise"  # compile off, fast off: the plain calls
    runs = {c: torch.load(run_paper_stage(PaperStageConfig(stage=1, compile=c, compile_backend="aot_eager", out=str(tmp_path / f"s{c}"),
                                                            train_dir=str(tmp_path / f"t{c}"), **common))) for c in (False, True)}
    assert all(torch.allclose(runs[True][k], runs[False][k], atol=1e-6) for k in runs[False])
    with pytest.raises(Exception, match="unknown torch.compile backend 'nope'"): PaperStageConfig(compile=True, compile_backend="nope")


def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_processes(fake, tmp_path):
    "paper/dvc.yaml's training command (the launcher on the paper params' `launch:`), on 2 CPU processes (gloo): both ranks train on disjoint shards, rank 0's notebook and progress are kept."
    out, train_dir = tmp_path / "stage1", tmp_path / "train"
    out.mkdir()
    import yaml  # the paper's parameters file, on the fake inputs: what `paper/dvc.yaml`'s stage1 reads
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump({"inputs": {"cache_dir": "", "sd": str(fake.sd), "shards": str(fake.shards)},
                                     "backbones": {"tiny": {"pretrained": str(fake.pretrained)}},
                                     "launch": {"num_processes": 2, "main_process_port": free_port(), "data_workers": 1},
                                     "dcr": {"schedule": "constant", "batch_size": 2, "grad_accum": 2, "rank_data": "disjoint"},  # shards split by rank (fixed mode's)
                                     "stage1": {"steps": 2, "ckpt_every": 1, "warmup_steps": 4, "lr": 0.001},
                                     "objectives": {"dcr": {"objective": "dcr", "tau": 0.1, "lam": 0.0, "num_negatives": 0}}}))
    reads = re.search(r'-p reads "([^"]*)"', yaml.safe_load((ROOT / "paper/dvc.yaml").read_text())["stages"]["stage1"]["cmd"])[1]
    params = dict(stage=1, params=str(pfile), reads=reads.replace("${item.backbone}", "tiny").replace("${item.objective}", "dcr"), model="tiny",
                  out=str(out), train_dir=str(train_dir))
    stage = yaml.safe_load((ROOT / "paper/dvc.yaml").read_text())["stages"]["stage1"]["cmd"]
    assert "python -m dcr_nb.launch paper/params.yaml --mixed_precision ${dcr.mixed_precision} -- -m dcr_nb.stage" in stage  # the command's shape
    cmd = [sys.executable, "-m", "dcr_nb.launch", str(pfile), "--mixed_precision", "no", "--",
           "-m", "dcr_nb.stage", str(ROOT / "nbs/stages/paper_train.ipynb"), str(out / "paper_train.ipynb")]
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


@pytest.mark.slow
def test_table1_as_one_dvc_repro(tmp_path):
    """`dvc --cd paper repro` on the fake layout, in a scratch copy of the checkout: two backbones (the OpenAI-style and the SigLIP-style
    stand-ins), DCR in both fidelity modes (two objectives), every stage of paper/dvc.yaml (training through the launcher on one CPU process,
    data workers on), ending in Table 1. The preflight passes on the same params file first, as `make paper` runs it."""
    import yaml
    work = tmp_path / "proj"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DCR_NB_ROOT": str(work), "MPLBACKEND": "Agg",
           "DVC_NO_ANALYTICS": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    subprocess.run(["bash", str(ROOT / "scripts/scratch_project.sh"), str(work)], check=True, env=env, capture_output=True)
    params = fake_paper_params(work / "paper" / "inputs" / "fake", checkout=work, port=free_port(), processes=1)  # 2 processes: the test above
    (work / "paper" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "dcr_nb.paper", "preflight", "paper/params.yaml"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("paper inputs ok: "), r.stdout + r.stderr
    assert "warning: tiny: dcr-fixed: fidelity = 'fixed'" in r.stderr, r.stderr  # the fixed-mode objective is flagged as a departure
    t0 = time.perf_counter()
    r = subprocess.run(["dvc", "--cd", "paper", "repro"], cwd=work, env=env, capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    print(f"dvc --cd paper repro, 2 backbones x 2 fidelity modes: {time.perf_counter() - t0:.0f} s")
    out = work / "paper" / "outputs"
    for b in ("tiny", STANDIN_SIGLIP):
        for o in ("dcr", "dcr-fixed"):
            assert (out / b / "stage2" / o / "encoder.pt").is_file() and (out / b / "evaluate" / o / "metrics.json").is_file(), (b, o)
        assert (out / b / "figures" / "summary.md").is_file()
    cfg = lambda b: json.loads((out / b / "stage2" / "dcr" / "hf" / "config.json").read_text())["architectures"]
    assert cfg("tiny") == ["CLIPVisionModelWithProjection"] and cfg(STANDIN_SIGLIP) == ["SiglipVisionModel"]
    switch = lambda b, o, k: re.search(rf"{k} += '(\w+)'", (out / b / "stage1" / o / "paper_train.ipynb").read_text())[1]  # the printed config
    for b in ("tiny", STANDIN_SIGLIP):
        assert [switch(b, o, k) for o in ("dcr", "dcr-fixed") for k in ("fidelity", "empty_prompt", "view_space")] == \
            ["reference", "masked", "normalized", "fixed", "unmasked", "pixel"], b
    table = json.loads((work / "paper" / "table1" / "table1.json").read_text())
    assert list(table) == ["tiny", STANDIN_SIGLIP] and all(list(table[b]) == ["original (ours)", "dcr (ours)", "dcr-fixed (ours)"] for b in table), table
    assert "Orientation" in (work / "paper" / "table1" / "table1.md").read_text()
    r = subprocess.run(["dvc", "--cd", "paper", "status"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert "up to date" in r.stdout, r.stdout + r.stderr
