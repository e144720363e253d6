"""World instruments: the benchmark's scenes recovered from its folder, the text oracle's known cases, the probe, the
denoiser sensitivity of a denoiser that ignores its conditioning, sample recognition, and the goal table."""
import json, logging, types
import numpy as np
import pytest
from conftest import load_script
import torch
import torch.nn as nn
from dcr_nb.conditioning import standin_diffusion, standin_unet
from dcr_nb.data import CATEGORY_ATTRIBUTE, MMVP_CATEGORIES, write_mmvp
from dcr_nb.encoder import create_encoder, get_tokenizer
from dcr_nb.fetch import load_fashion_mnist
from dcr_nb.world import (BENCH_ATTRS, attribute_probe, benchmark_pairs, denoiser_sensitivity, fit_reader, report_table,
                          sample_recognition, text_oracle)

logging.getLogger().setLevel(logging.ERROR)
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    clip = create_encoder("tiny", random_init=True).eval(); tok = get_tokenizer("tiny")
    return clip, tok, standin_diffusion(clip, tok, standin_unet())


def study(name: str):
    "The world study studies/<name>.py as a module."
    return load_script(f"studies/{name}.py")


class ConstText(nn.Module):
    "A text side that embeds every text identically."
    def __init__(self): super().__init__(); self.logit_scale = nn.Parameter(torch.tensor(np.log(100.0)))
    def encode_text(self, tokens): return torch.ones(len(tokens), 8)


def test_benchmark_pairs_from_folder(tmp_path):
    te, yte = load_fashion_mnist("test")
    pairs = benchmark_pairs(pairs_per_category=1)
    write_mmvp(tmp_path / "mmvp", pairs, te)
    assert benchmark_pairs(tmp_path / "mmvp") == pairs
    with pytest.raises(ValueError, match="not the benchmark of seed 3"): benchmark_pairs(tmp_path / "mmvp", seed=3)


def test_text_oracle(models):
    clip, tok, _ = models
    pairs = benchmark_pairs(pairs_per_category=2)
    assert text_oracle(ConstText(), tok, pairs).mean == 0.0  # identical embeddings: p = 0.5, no pair scores
    r = text_oracle(clip, tok, pairs)
    assert list(r.per_category) == list(MMVP_CATEGORIES) and all(v in (0.0, 50.0, 100.0) for v in r.per_category.values())


def test_attribute_probe(models):
    out = attribute_probe(models[0], n=60, attributes=("label", "color"))
    assert list(out) == ["label", "color"]
    assert all(0 <= r["accuracy"] <= 100 and 0 < r["chance"] <= 100 and r["n_test"] == 30 for r in out.values())


def test_sensitivity_of_a_deaf_denoiser_is_zero(models):
    clip, tok, d = models
    u = standin_unet()
    for name, m in u.named_modules():
        if name.endswith("attn2"): m.to_v.weight.data.zero_()  # cross-attention outputs no longer depend on the text
    deaf = denoiser_sensitivity(standin_diffusion(clip, tok, u), n=4, timesteps=(300,), attributes=("count", "viewpoint"))
    for per in deaf.values():
        for r in per.values(): assert r["diff"] == 0.0 and r["ci95"][0] <= 0 <= r["ci95"][1]
    live = denoiser_sensitivity(d, n=4, timesteps=(300,), attributes=("count",))["count"]
    assert set(live) == {"300", "pooled"} and live["pooled"]["diff"] != 0


def test_sample_recognition_and_table(models, tmp_path):
    d = models[2]
    rec = sample_recognition(d, n=4, steps=2, reader=fit_reader(n=300), path=tmp_path / "s.png", n_show=4)
    assert all(0 <= rec[k] <= 100 for k in ("label_%", "color_%", "reference_label_%", "reference_color_%"))
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    report = {"d_ability": {"zero_shot_acc": 0.65, "linear_probe_acc": 0.5}, "sample_recognition": rec,
              "mmvp": {"mean": 50.0, **{c: 20.0 for c in MMVP_CATEGORIES}}}
    json.dumps(report)
    table = report_table(report, blind=("orientation",))
    rows = {l.split(" | ")[0][2:]: l for l in table.splitlines()[2:]}
    assert rows["zero-shot, neutral Fashion-MNIST test set"].endswith("pass |")
    assert rows["linear probe, same set"].endswith("FAIL |")
    assert rows["MMVP-style (blind): Orientation and Direction"].endswith("pass |")
    assert rows["MMVP-style: Texts"].endswith("FAIL |")
    assert "not measured" in rows["denoiser sensitivity: orientation"]


def test_world_levers_plain_variant_replaces_scenes_by_neutral_renders():
    "studies/world_levers.py: `plainF` swaps about F% of the scenes for the same item rendered neutrally, captioned by the world's rule."
    from dcr_nb.data import CLASS_NOUNS, arrays_to_specs, full_caption, neutral_spec, render, render_scenes
    m = study("world_levers")
    images, labels = load_fashion_mnist("train")
    rates = {"color": 0.8, "count": 0.6}
    src = render_scenes(images, labels, 400, seed=3, rates=rates)
    base = m.variant_scenes("base", src, rates, images)
    assert all(np.array_equal(base[k], src[k]) for k in src)
    out = m.variant_scenes("plain50", src, rates, images)
    old, new = arrays_to_specs(src), arrays_to_specs(out)
    swapped = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
    assert 160 <= len(swapped) <= 240, len(swapped)  # about half
    for i in swapped:
        assert new[i] == neutral_spec(old[i].item, old[i].label)  # the same garment, neutral
        assert np.array_equal(out["images"][i], render(new[i], images, 32)) and out["full"][i] == full_caption(new[i])
        assert CLASS_NOUNS[new[i].label][0] in out["short"][i]  # a short caption always names the class (one item: singular)
    kept = [i for i in range(400) if i not in set(swapped)]
    assert all(np.array_equal(out["images"][i], src["images"][i]) and out["short"][i] == src["short"][i] for i in kept)
    with pytest.raises(SystemExit, match="unknown variant 'wide'"): m.variant_scenes("wide", src, rates, images)


def test_world_levers_variant_names_set_tower_batch_and_steps():
    "studies/world_levers.py: variant parts combine with '+'; a bad name stops the run before any training; vitWxL builds that tower."
    from dcr_nb.encoder import create_encoder
    from dcr_nb.data import arrays_to_specs, render, render_scenes
    m = study("world_levers")
    assert m.parse_variant("base") == {"scenes": "base", "tower": None, "batch_size": None, "steps": None, "size": 32, "patch": None, "resnet": None, "twins": 0, "ce": None}
    assert m.parse_variant("plain10+vit192x6+batch256+steps1200+px64+patch4") == {"scenes": "plain10", "tower": (192, 6), "batch_size": 256, "steps": 1200, "size": 64, "patch": 4, "resnet": None, "twins": 0, "ce": None}
    assert m.parse_variant("rn16+steps1200")["resnet"] == 16
    for bad, msg in (("wide", "part 'wide'"), ("base+vit100x4", "multiple of 32"), ("batch0", "must be positive"), ("vit128", "part 'vit128'"),
                     ("px60", "multiple of 8"), ("patch3", "must divide the scene size"), ("patch0", "must divide"), ("rn12", "multiple of 8"),
                     ("rn16+px48", "multiple of 32"), ("rn16+vit128x4", "no vitWxL")):
        with pytest.raises(SystemExit, match=msg): m.parse_variant(bad)
    with pytest.raises(SystemExit, match="part 'x'"): m.main(["--variants", "base,x", "--out", "/nonexistent/never-written"])
    clip = create_encoder(m.tower_model(64, 2, 64), random_init=True)
    assert clip.visual.transformer.width == 64 and len(clip.visual.transformer.resblocks) == 2 and clip.visual.image_size == (64, 64)
    assert clip.visual.conv1.kernel_size == (8, 8)  # 8x8 patches at any size
    fine = create_encoder(m.tower_model(64, 2, 32, patch=2), random_init=True)
    assert fine.visual.conv1.kernel_size == (2, 2) and fine.visual.positional_embedding.shape[0] == 16 * 16 + 1  # patch2: a 16x16 token grid
    rn = create_encoder(m.tower_model(16, 1, 32, resnet=True), random_init=True)
    assert type(rn.visual).__name__ == "ModifiedResNet" and rn.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 384)
    images, labels = load_fashion_mnist("train")
    src = render_scenes(images, labels, 20, seed=3, rates={"color": 0.8})
    big = m.at_size(src, images, 64)
    assert big["images"].shape == (20, 64, 64, 3) and list(big["short"]) == list(src["short"])
    assert np.array_equal(big["images"][7], render(arrays_to_specs(src)[7], images, 64))
    assert clip.text.transformer.config.hidden_size == 384  # the locked MiniLM text tower is kept


def test_world_levers_twins_differ_from_their_scene_only_in_the_item_and_its_class():
    "studies/world_levers.py: `twinsF` pairs a world scene with its twin (another class, the caption's other words kept) in every batch."
    import dataclasses
    from dcr_nb.data import CLASS_NOUNS, arrays_to_specs, render, render_scenes
    m = study("world_levers")
    images, labels = load_fashion_mnist("train")
    rates = {"color": 0.8, "count": 0.6, "position": 0.6, "text": 0.6, "orientation": 0.03}
    src = render_scenes(images, labels, 200, seed=3, rates=rates, p_neutral=0.25)
    tw = m.twin_scenes(src, images, labels, rates, seed=3)
    for s, t, a, b in zip(arrays_to_specs(src), arrays_to_specs(tw), src["short"], tw["short"]):
        assert t.label != s.label and labels[t.item] == t.label and t == dataclasses.replace(s, item=t.item, label=t.label)
        noun = lambda spec: CLASS_NOUNS[spec.label][spec.count > 1]
        assert b.replace(noun(t), noun(s)).replace("an ", "a ") == a.replace("an ", "a ") and noun(t) in b  # only the class noun (and its article) differ
    assert np.array_equal(tw["images"][5], render(arrays_to_specs(tw)[5], images, 32))
    with pytest.raises(ValueError, match="seed 4"): m.twin_scenes(src, images, labels, rates, seed=4)  # not these scenes' draws
    idx = m.batch_indices(200, 16, 0, 3).numpy(); b = m.lever_batches(src, tw, 16, 50, seed=0)(3)  # 4 pairs: the world's first 12, the first 4's twins last
    assert b["images"].shape == (16, 3, 32, 32)
    assert b["captions"] == [str(c) for c in src["short"][idx[:12]]] + [str(c) for c in tw["short"][idx[:4]]]
    assert b["labels"].tolist() == src["label"][idx[:12]].tolist() + tw["label"][idx[:4]].tolist()
    assert np.array_equal(b["images"][13].numpy(), m.to_tensor(tw["images"][idx[1:2]])[0].numpy())
    assert m.lever_batches(src, None, 16, 50, seed=0)(3)["captions"] == [str(c) for c in src["short"][idx]]  # no twins: the world's batch
    assert m.parse_variant("twins50+rn16")["twins"] == 50
    assert m.parse_variant("ce5")["ce"] == 0.5 and m.parse_variant("supervised+rn16")["ce"] == "alone" and m.parse_variant("base")["ce"] is None
    for bad, msg in (("twins150", "0-100"), ("twins50+plain10", "no plainF"), ("ce5+supervised", "one of ceW")):
        with pytest.raises(SystemExit, match=msg): m.parse_variant(bad)


def test_world_levers_class_loss_adds_a_cross_entropy_to_lit(models):
    "studies/world_levers.py: ceW adds W/10 x a class head's cross-entropy to LiT's loss; supervised trains on the cross-entropy alone."
    m = study("world_levers")
    clip, tok, _ = models
    torch.manual_seed(0)
    batch = {"images": torch.rand(6, 3, 32, 32), "captions": [f"a photo of a coat {i}" for i in range(6)], "labels": torch.arange(6)}
    lit = m.LeverTask(clip, tok, None)(batch)["loss"].item()
    both = m.LeverTask(clip, tok, 0.5); torch.manual_seed(1); both.head.reset_parameters(); out = both(batch)
    assert out["lit"] == pytest.approx(lit) and out["loss"].item() == pytest.approx(lit + 0.5 * float(out["ce"]), rel=1e-5)
    alone = m.LeverTask(clip, tok, "alone"); alone.head.load_state_dict(both.head.state_dict()); got = alone(batch)
    assert set(got) == {"loss", "ce"} and got["loss"].item() == pytest.approx(float(out["ce"]))
    got["loss"].backward(); assert alone.head.weight.grad.abs().sum() > 0
    const = nn.Linear(both.head.in_features, 10); const.weight.data.zero_(); const.bias.data = torch.eye(10)[5]  # always "sandal"
    test = [s.label for s in m.world_specs(load_fashion_mnist("test")[1], 40, 0, m.WORLD_STREAMS["probe"])[20:]]  # attribute_probe's test half
    assert test.count(5) == 4 and m.head_accuracy(clip, const, 40) == pytest.approx(20.0)


def test_world_samples_sampler_names_and_interval():
    "studies/world_samples.py: `ddimS[@G][-etaE][-trailing]` names a sampler; a bad name stops the run before the world is loaded; Wilson intervals."
    m = study("world_samples")
    assert m.parse_sampler("ddim50") == (50, 1.0, {}) and m.parse_sampler("ddim200@1.5") == (200, 1.5, {})
    assert m.parse_sampler("ddim50@2-eta0.5-trailing") == (50, 2.0, {"eta": 0.5, "spacing": "trailing"})
    for bad in ("ddpm50", "ddim0", "ddim50@", "ddim50@x", "ddim50-eta", "ddim50-leading", "ddim50trailing"):
        with pytest.raises(SystemExit, match="unknown sampler"): m.parse_sampler(bad)
    with pytest.raises(SystemExit, match="unknown sampler 'x'"): m.main(["--samplers", "ddim50,x", "--out", "/nonexistent/never-written"])
    with pytest.raises(SystemExit, match="--train '600,x'"): m.main(["--train", "600,x", "--out", "/nonexistent/never-written"])
    with pytest.raises(SystemExit, match="nothing to measure"): m.main(["--samplers", "", "--out", "/nonexistent/never-written"])
    with pytest.raises(SystemExit, match="--n 0"): m.main(["--n", "0", "--out", "/nonexistent/never-written"])
    assert m.parse_train("600,1500:w2+attn16") == [(600, ""), (1500, "w2+attn16")]
    for bad, msg in (("600:wide", "part 'wide'"), ("0", "positive step counts"), ("600:attn8", "part 'attn8'")):
        with pytest.raises(SystemExit, match=msg): m.parse_train(bad)
    o = m.unet_overrides("w2+attn16+lpb2")
    assert o["block_out_channels"] == (64, 128, 128) and o["attention_head_dim"] == (2, 4, 4) and o["layers_per_block"] == 2
    assert o["down_block_types"][1] == "CrossAttnDownBlock2D" and o["up_block_types"][1] == "CrossAttnUpBlock2D" and m.unet_overrides("") == {}
    from dcr_nb import conditioning
    before = dict(conditioning.STANDIN_UNET)
    with pytest.raises(RuntimeError, match="inside"), m.standin_unet_as(m.unet_overrides("w2")):
        assert tuple(conditioning.standin_unet(cross_attention_dim=16).config.block_out_channels) == (64, 128, 128)
        raise RuntimeError("inside")
    assert conditioning.STANDIN_UNET == before  # restored, even after an error
    lo, hi = m.wilson(37, 256)
    assert 10.6 < lo < 10.8 and 19.2 < hi < 19.4  # 14.5% of 256: [10.7, 19.3]
    assert m.wilson(0, 64)[0] == pytest.approx(0, abs=1e-12) and m.wilson(64, 64)[1] == pytest.approx(100)


def test_world_samples_sampler_options_patch_the_world_sampler_only_inside(models):
    "studies/world_samples.py: `sampler_options` makes `sample_recognition` draw with eta / spacing inside, and restores `world.ddim_sample`."
    from dcr_nb import world
    m, d = study("world_samples"), models[2]; cond = d.text(["a red bag", "two blue sandals"]); orig = world.ddim_sample
    with m.sampler_options({}): assert world.ddim_sample is orig
    with pytest.raises(RuntimeError, match="inside"), m.sampler_options({"eta": 1.0, "spacing": "trailing"}):
        assert torch.equal(world.ddim_sample(d, cond, 3, 1.0, 5), orig(d, cond, 3, 1.0, 5, eta=1.0, spacing="trailing"))
        raise RuntimeError("inside")
    assert world.ddim_sample is orig  # restored, even after an error


def test_world_levers_drops_rows_and_scenes_made_from_other_world_scenes(tmp_path, monkeypatch):
    "Rerunning world_levers into the same DIR after the world's scenes changed remakes the scene variants and drops the old rows."
    import yaml
    from pathlib import Path
    from dcr_nb.data import load_npz, render_scenes, save_npz
    m = study("world_levers")
    root = Path(__file__).parents[1]; params = yaml.safe_load((root / "world" / "params.yaml").read_text())
    prep = tmp_path / "prepare"; prep.mkdir(); params["prepare"]["out"] = str(prep)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(m, "root_path", lambda p: tmp_path / "params.yaml" if p == "world/params.yaml" else root / p)
    trained = []
    monkeypatch.setattr(m, "run_pretrain_clip", lambda cfg: trained.append(load_npz(Path(cfg.data) / "scenes.npz")["short"][0]) or "clip")
    monkeypatch.setattr(m, "load_clip", lambda *a: __import__("types").SimpleNamespace(visual=nn.Linear(1, 1)))  # no training or measuring: the bookkeeping only
    monkeypatch.setattr(m, "measure", lambda *a: {"zero_shot": 0.0, "linear_probe": 0.0, "class_in_scenes": 0.0})
    images, labels = load_fashion_mnist("train")
    out = tmp_path / "levers"
    for e in ("eval_test.npz", "eval_train.npz"): (prep / e).write_bytes(b"")
    save_npz(prep / "scenes.npz", **render_scenes(images, labels, 5, seed=1, rates={"color": 1.0}))
    assert m.main(["--variants", "base,batch64", "--out", str(out)]) == 0 and len(trained) == 2
    first = json.loads((out / "results.json").read_text()); assert set(first) == {"base", "batch64"}
    save_npz(prep / "scenes.npz", **render_scenes(images, labels, 5, seed=2, rates={"color": 1.0}))  # the world was rebuilt
    assert m.main(["--variants", "base", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert set(rows) == {"base"} and rows["base"]["source_md5"] != first["base"]["source_md5"]  # batch64 was made from the old scenes
    assert trained[-1] == load_npz(prep / "scenes.npz")["short"][0] != trained[0]  # trained on the new scenes, not the cached copy


def test_world_wording_swaps_one_attribute_for_the_measurement_only():
    "studies/world_wording.py: `ATTR=P0|P1|...` rephrases captions and statements inside the block only; bad variants stop the run first."
    from dcr_nb.data import SceneSpec, WORDS, full_caption, statement
    m = study("world_wording")
    attr, phrases = m.parse_words("position=in the left half|in the right half|in the upper half|in the lower half")
    assert attr == "position" and phrases[:2] == ("in the left half", "in the right half") and phrases[4] == WORDS["position"][4]  # centre kept
    s, before = SceneSpec(item=0, label=3, position=1), WORDS["position"]
    with m.words(attr, phrases):
        assert "in the right half" in full_caption(s) and statement("Positional and Relational Context", s) == "a dress in the right half"
    assert WORDS["position"] is before and before[1] in full_caption(s)  # restored
    for bad, msg in (("position=a|b|c", "needs 4 distinct"), ("position=a|b|c|c", "needs 4 distinct"), ("size=big|", "needs 2 distinct"),
                     ("where=a|b", "ATTR one of"), ("position", "ATTR one of")):
        with pytest.raises(SystemExit, match=msg): m.parse_words(bad)
    with pytest.raises(SystemExit, match="needs 4"): m.main(["--words", "position=a|b", "--out", "/nonexistent/never-written"])
    with pytest.raises(SystemExit, match="--pairs 0"): m.main(["--pairs", "0", "--out", "/nonexistent/never-written"])


def test_world_wording_conditioning_signal():
    "The conditioning signal is 0 for a text side deaf to the words, > 0 where the states read the changed words, and per attribute."
    import numpy as np
    from dcr_nb.data import sample_spec
    m = study("world_wording")
    specs = [sample_spec(np.random.default_rng(0), np.repeat(np.arange(10), 10)) for _ in range(20)]
    deaf = types.SimpleNamespace(encode=lambda caps: torch.ones(len(caps), 4, 3))
    assert m.conditioning_signal(deaf, specs) == {a: 0.0 for a in m.SIGNAL_ATTRS}
    def letters(caps):  # (B, 2, 26): counts of each letter, and whether the caption says "upside down"
        x = torch.zeros(len(caps), 2, 26)
        for i, c in enumerate(caps):
            for ch in c:
                if ch.isalpha() and ch.isascii(): x[i, 0, ord(ch.lower()) - 97] += 1
            x[i, 1, 0] = 10.0 * ("upside down" in c)
        return x
    sig = m.conditioning_signal(types.SimpleNamespace(encode=letters), specs, attrs=("orientation", "position"))
    assert sig["orientation"] > sig["position"] > 0, sig
    with pytest.raises(SystemExit, match="--scenes 0"): m.main(["--scenes", "0", "--out", "/nonexistent/never-written"])


def test_world_readers_cnn_learns_and_bad_input_stops_first():
    "studies/world_readers.py: its CNN learns a class that is only in the shape (not the mean); bad sizes stop the run before any work."
    m = study("world_readers")
    g = torch.Generator().manual_seed(0); x = torch.rand(256, 1, 16, 16, generator=g) * 0.2
    y = torch.arange(256) % 2; x[y == 1, :, 4:12, 7:9] += 0.8; x[y == 0, :, 7:9, 4:12] += 0.8  # a vertical or a horizontal bar: same mass
    net = m.fit(x[:192], y[:192], epochs=10, batch_size=32)
    assert (m.predict(net, x[192:]) == y[192:].numpy()).mean() >= 0.95
    assert m.cnn(3)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    for argv, msg in ((["--n-train", "5"], "--n-train 5"), (["--epochs", "0"], "--epochs 0"), (["--samples", "-1"], "--samples -1"),
                      (["--n-probe", "1"], "--n-probe 1"), (["--n-probe", "0"], "--n-probe 0")):
        with pytest.raises(SystemExit, match=msg): m.main(argv + ["--out", "/nonexistent/never-written"])


def test_world_class_breakdown_and_probe_agree():
    "studies/world_class.py: per-scene probe predictions score what `linear_probe` scores; by_value splits them per attribute value."
    from dcr_nb.data import SceneSpec
    from dcr_nb.evaluate import linear_probe
    m = study("world_class")
    rng = np.random.default_rng(0); y = rng.integers(0, 3, 200); x = rng.normal(size=(200, 8)) + y[:, None]
    ok = m.probe_predictions(x[:100], y[:100], x[100:]) == y[100:]
    assert ok.mean() == pytest.approx(linear_probe(x[:100], y[:100], x[100:], y[100:]), abs=1e-12) and 0.5 < ok.mean() < 1
    specs = [SceneSpec(item=0, label=0, size=i % 2) for i in range(4)]
    assert m.by_value(np.array([True, False, True, True]), specs, ("size",)) == {"size": {0: [100.0, 2], 1: [50.0, 2]}}
    with pytest.raises(SystemExit, match="--n 10"): m.main(["--n", "10", "--out", "/nonexistent/never-written"])


def test_world_class_tokens_and_probe_c():
    "studies/world_class.py: block_tokens hooks the residual stream (the last block's class token, ln_post and proj give encode_image); probe_c sweeps C and picks one by CV."
    from dcr_nb.encoder import create_encoder
    from dcr_nb.evaluate import linear_probe, model_pixels
    m = study("world_class")
    torch.manual_seed(0); clip = create_encoder("tiny", random_init=True).eval(); v = clip.visual
    x = torch.rand(5, 3, 32, 32)
    last, second = m.block_tokens(clip, x, block=-1, batch_size=2), m.block_tokens(clip, x, batch_size=3)
    n_tok = (32 // v.conv1.kernel_size[0]) ** 2 + 1
    assert last.shape == second.shape == (5, n_tok, v.conv1.out_channels) and not torch.allclose(last, second)
    with torch.no_grad(): want = clip.encode_image(model_pixels(clip, x))
    torch.testing.assert_close(v.ln_post(last[:, 0]) @ v.proj, want, rtol=1e-4, atol=1e-5)
    rng = np.random.default_rng(0); y = rng.integers(0, 3, 200); f = rng.normal(size=(200, 8)) + y[:, None]
    r = m.probe_c(f[:100], y[:100], f[100:], y[100:], grid=(0.01, 1.0))
    assert set(r["swept"]) == {0.01, 1.0} and r["cv_C"] in (0.01, 1.0) and r["cv_test_%"] == r["swept"][r["cv_C"]][0]
    assert r["swept"][1.0][0] == pytest.approx(100 * linear_probe(f[:100], y[:100], f[100:], y[100:]))
    assert all(0 <= a <= 100 for pair in r["swept"].values() for a in pair)
    t = m.token_readings(clip, x.repeat(8, 1, 1, 1), np.arange(40) % 2, 20)
    assert set(t) == {"class token", "mean of patch tokens", "all patch tokens"} and all(0 <= a <= 100 for a in t.values())
