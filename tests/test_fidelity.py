"""The paper profile's fidelity modes on the tiny fakes (CPU): reference mode reproduces the released code's behaviour
(condition tokens, target, views, data per rank, anchor crop), fixed mode applies our corrections, and both run."""
import dataclasses
import numpy as np
import pytest
import torch
from dcr_nb.core import ConfigError, root_path
from dcr_nb.paper import (DEPARTURES, PaperStageConfig, build_paper_task, departures_table, fidelity_settings, run_paper_stage,
                          RELEASED_RECIPES, recipe_departures)
from dcr_nb.paper_data import shard_batches
from dcr_nb.paper_evaluate import PaperEvaluateConfig, run_paper_evaluate
from dcr_nb.fixtures import fake_paper_inputs, write_tiny_sd
from dcr_nb.conditioning import load_sd
from dcr_nb.losses import resolve_target
from dcr_nb.readers import load_image, random_resized_box

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return fake_paper_inputs(tmp_path_factory.mktemp("paper"))


@pytest.fixture(scope="module")
def eps_sd(tmp_path_factory):
    "A tiny SD whose scheduler predicts epsilon, as SD 2.1-base (the checkpoint the released README recommends)."
    return str(write_tiny_sd(tmp_path_factory.mktemp("sd_eps"), "epsilon"))


def common(fake, **kw):
    return {**dict(model="tiny", clip=fake.pretrained, denoiser=fake.sd, data=fake.shards, objective="dcr", steps=1, batch_size=2,
                   ckpt_every=1, lr=1e-3), **kw}


def test_condition_tokens_are_projector_plus_masked_empty_prompt(fake, eps_sd):
    "reference: tokens = projector(emb)[:, None] + text_encoder(ids, attention_mask), exactly (as CLIP_bank.py builds them)."
    task = build_paper_task(PaperStageConfig(stage=1, **common(fake, denoiser=eps_sd)))
    d = load_sd(eps_sd)
    tok = __import__("transformers").CLIPTokenizer.from_pretrained(f"{eps_sd}/tokenizer")
    ids = tok([""] * 3, padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    with torch.no_grad():
        uc = d.text.module(input_ids=ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
        emb = torch.randn(3, task.builder.projector[0].normalized_shape[0])
        assert torch.equal(task.builder(emb), task.builder.projector(emb)[:, None] + uc)
        unmasked = d.text.module(input_ids=ids.input_ids).last_hidden_state
    assert not torch.allclose(uc, unmasked)  # the mask matters: fixed mode's states differ
    fixed = build_paper_task(PaperStageConfig(stage=1, fidelity="fixed", **common(fake, denoiser=eps_sd)))
    with torch.no_grad(): assert torch.equal(fixed.builder(emb), fixed.builder.projector(emb)[:, None] + unmasked[:1])


def test_reference_target_is_velocity_for_an_epsilon_checkpoint(fake, eps_sd):
    for fidelity, want in (("reference", "velocity"), ("fixed", "epsilon")):
        task = build_paper_task(PaperStageConfig(stage=1, fidelity=fidelity, **common(fake, denoiser=eps_sd)))
        assert resolve_target(task.objective.target, task.d.scheduler) == want, fidelity
    # an explicit switch overrides the fidelity
    task = build_paper_task(PaperStageConfig(stage=1, fidelity="reference", target="auto", **common(fake, denoiser=eps_sd)))
    assert resolve_target(task.objective.target, task.d.scheduler) == "epsilon"


def test_reference_holds_the_denoiser_in_bf16_and_views_on_normalised_values(fake):
    ref = build_paper_task(PaperStageConfig(stage=1, **common(fake)))
    fix = build_paper_task(PaperStageConfig(stage=1, fidelity="fixed", **common(fake)))
    assert ref.d.unet.dtype == torch.bfloat16 and ref.d.codec.vae.dtype == torch.bfloat16 and ref.augment.space == "normalized"
    assert fix.d.unet.dtype == torch.float32 and fix.augment.space == "pixel"
    assert ref.augment.ratio == fix.augment.ratio == (0.9, 1.1)


def test_ranks_share_one_stream_in_reference_mode(fake):
    shared, disjoint = (shard_batches(fake.shards, 3, seed=0, size=32, shared=s) for s in (True, False))
    assert shared(0, 0, 2)["captions"] == shared(0, 1, 2)["captions"] == disjoint(0, 0, 1)["captions"]
    assert not set(disjoint(0, 0, 2)["captions"]) & set(disjoint(0, 1, 2)["captions"])


def test_reference_anchor_is_a_reproducible_random_resized_crop(tmp_path):
    from PIL import Image
    rgb = np.random.default_rng(0).integers(0, 256, (30, 60, 3), dtype=np.uint8)  # a wide image: a centre crop drops its sides
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    a, b = (load_image(tmp_path / "wide.png", 16, np.random.default_rng(5)) for _ in range(2))
    assert torch.equal(a, b) and a.shape == (3, 16, 16)
    assert not torch.equal(a, load_image(tmp_path / "wide.png", 16))
    boxes = np.array([random_resized_box(500, 400, np.random.default_rng(i)) for i in range(300)])
    area, aspect = boxes[:, 2] * boxes[:, 3] / (500 * 400), boxes[:, 2] / boxes[:, 3]  # (up to integer rounding)
    assert (area >= 0.898).all() and (area <= 1).all() and (aspect >= 0.749).all() and (aspect <= 4 / 3 + 0.005).all()
    # a 2:1 image admits no such box: torchvision's fallback, the centred box of the largest allowed aspect (4/3)
    assert random_resized_box(60, 30, np.random.default_rng(0)) == (10, 0, 40, 30)


def test_bad_switch_values_are_refused():
    with pytest.raises(ConfigError, match="fidelity must be one of reference, fixed"): PaperStageConfig(fidelity="released")
    with pytest.raises(ConfigError, match="rank_data must be one of shared, disjoint"): PaperStageConfig(rank_data="all")
    with pytest.raises(ConfigError, match="target must be one of"): PaperStageConfig(target="noise")


def test_registry_table_and_recipes(root):
    table = departures_table({"denoiser target y": "measured!"})
    assert table.count("\n") == len(DEPARTURES) + 1 and "measured!" in table
    for d in DEPARTURES:
        assert d.switch in fidelity_settings("reference") or not d.switch
        assert (d.reference != d.fixed) == bool(d.switch), d.what
    import yaml
    params = yaml.safe_load((root / "paper/params.yaml").read_text())
    assert params["dcr"]["fidelity"] == "reference" and all(recipe_departures(params, b) == [] for b in params["backbones"])
    assert all(params["dcr"][k] == "" for k in fidelity_settings("reference"))  # every switch follows the fidelity by default
    assert len(RELEASED_RECIPES) == 6 and {r["stage2_steps"] for r in RELEASED_RECIPES.values()} == {4600, 100_000}


@pytest.mark.parametrize("fidelity", ["reference", "fixed"])
def test_both_modes_end_to_end(fake, tmp_path, fidelity):
    "Both stages and the evaluation on the fake layout, in each mode."
    c = common(fake, fidelity=fidelity)
    proj = run_paper_stage(PaperStageConfig(stage=1, out=str(tmp_path / "s1"), train_dir=str(tmp_path / "t1"), **c))
    enc = run_paper_stage(PaperStageConfig(stage=2, lora_r=4, projector=str(proj), out=str(tmp_path / "s2"), train_dir=str(tmp_path / "t2"), **c))
    m = run_paper_evaluate(PaperEvaluateConfig(name="dcr", model="tiny", encoder=str(enc), made_by="stage2@dcr", mmvp=fake.mmvp,
                                               d_ability="", out=str(tmp_path / "ev")))
    assert 0 <= m["mmvp"]["mean"] <= 100


def paper_params(fake, sd=None, **more) -> dict:
    "A paper params file's sections for the fake layout (sd and mmvp relative to the root, as paper/dvc.yaml needs)."
    import os
    rel = lambda p: os.path.relpath(p, root_path())
    inputs = {k: v for k, v in fake.to_dict().items() if k not in ("model", "pretrained")} | {"sd": rel(sd or fake.sd), "mmvp": rel(fake.mmvp)}
    return {"inputs": inputs, "backbones": {fake.model: {"pretrained": fake.pretrained}}, **more}


def test_departures_cover_negatives_switches_and_not_cost_keys(root):
    "Every departure from the released recipe is listed (per backbone, per objective); the cost keys, which keep the math, never are."
    import yaml
    from dcr_nb.paper import SAME_MATH, unet_calls
    p = yaml.safe_load((root / "paper/params.yaml").read_text())
    cost = {**p, "dcr": {**p["dcr"], **{k: v for k, v in dict(chunk_size=64, checkpoint=True, fast=True, compile=True).items()}},
            "launch": {**p["launch"], "data_workers": 8}}
    assert set(SAME_MATH) == {"chunk_size", "checkpoint", "fast", "compile", "data_workers"} and recipe_departures(cost, "openai-l14") == []
    odd = {**p, "dcr": {**p["dcr"], "empty_prompt": "unmasked", "hflip": 0.0, "condition": "tokens"},
           "objectives": {"dcr": {**p["objectives"]["dcr"], "num_negatives": 1, "tau": 0.07}, "fixed": {"objective": "dcr", "fidelity": "fixed"},
                          "recon": {"objective": "recon"}}}
    got = recipe_departures(odd, "siglip-so400m")
    for want in ("dcr: empty_prompt = 'unmasked' (released: 'masked')", "dcr: hflip = 0.0 (released: 0.5)", "dcr: condition = 'tokens' (released: 'cls')",
                 f"dcr: num_negatives = 1 (released: all B - 1): {unet_calls(16, 1)} UNet calls per micro-step instead of 272",
                 "dcr: tau = 0.07 (released: 0.1)", "fixed: fidelity = 'fixed' (released: 'reference')"):
        assert any(g.startswith(want) for g in got), (want, got)
    assert not any(g.startswith("recon: hflip") for g in got)  # a comparison objective is not DCR: only its fidelity switches count
    assert recipe_departures(p, "metaclip-h14") == ["stage2.steps = 4600 (released: 100000)"]  # the backbone's own released numbers


def test_device_guard(monkeypatch, tmp_path, fake):
    "The preflight refuses a launch that asks for more GPUs than torch sees; a stage refuses a process group smaller than the launch."
    import os, yaml
    from types import SimpleNamespace
    from dcr_nb.paper import main, check_ranks, DeviceMismatch, check_devices
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(paper_params(fake, launch={"num_processes": 8}, dcr={"fidelity": "fixed"})))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["preflight", str(tmp_path / "p.yaml")]) == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert main(["preflight", str(tmp_path / "p.yaml")]) == 0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(DeviceMismatch, match="torch sees 4 CUDA device"): check_ranks(SimpleNamespace(num_processes=8, distributed_type="MULTI_GPU"), {"WORLD_SIZE": "8"})
    with pytest.raises(DeviceMismatch, match="group of 1 \\(NO\\)"): check_ranks(SimpleNamespace(num_processes=1, distributed_type="NO"), {"WORLD_SIZE": "2"})
    with pytest.raises(DeviceMismatch, match="driver"): check_devices(1, visible=0)


def test_preflight_refuses_a_v_prediction_checkpoint_in_reference_mode(tmp_path, fake, eps_sd):
    import os, yaml
    from dcr_nb.paper import main
    for sd, fidelity, want in ((fake.sd, "reference", 1), (fake.sd, "fixed", 0), (eps_sd, "reference", 0)):
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(paper_params(fake, sd, dcr={"fidelity": fidelity, "target": ""})))
        assert main(["preflight", str(tmp_path / "p.yaml")]) == want, (sd, fidelity)
    # an objective that runs in reference mode needs the epsilon checkpoint too, whatever `dcr` says
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(paper_params(fake, dcr={"fidelity": "fixed"}, objectives={"ref": {"objective": "dcr", "fidelity": "reference"}})))
    assert main(["preflight", str(tmp_path / "p.yaml")]) == 1
