"""LoRA as DCR's released code trains it (peft `all-linear`, `bias="lora_only"` on Hugging Face's CLIP), rebuilt on open_clip's
towers: the same trainable parameters and the same embeddings as peft on the same tower exported to transformers."""
import copy
import open_clip, pytest, torch, torch.nn as nn
from dcr_nb.encoder import (Normalize, add_lora, image_embedding, image_stats, lora_parameters, merge_lora, peft_lora_state,
                            save_encoder, _is_lora)
from dcr_nb.hf import export_hf

R, ALPHA = 4, 8  # alpha != r: a wrong scale would show
RELEASED = dict(r=R, lora_alpha=ALPHA, lora_dropout=0.1, target_modules="all-linear", bias="lora_only")

def small_clip(quick_gelu=True) -> nn.Module:
    "A random open_clip CLIP with a reduced ViT image tower (width 64, 2 layers, 2 heads, patch 8, image 32)."
    vision = dict(width=64, layers=2, head_width=32, patch_size=8, image_size=32)
    text = dict(width=32, heads=2, layers=1, context_length=16, vocab_size=100)
    return open_clip.CLIP(embed_dim=48, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval()

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    "(ours, peft): the same random tower, adapted by `add_lora` on open_clip and by peft on transformers; random non-zero adapters, shared."
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionModelWithProjection
    torch.manual_seed(0)
    ours = small_clip()
    hf = CLIPVisionModelWithProjection.from_pretrained(export_hf(ours, tmp_path_factory.mktemp("hf"))).eval()
    theirs = get_peft_model(hf, LoraConfig(**RELEASED)).eval()
    add_lora(ours, r=R, alpha=ALPHA, dropout=0.1).eval()
    for p in lora_parameters(ours).values(): nn.init.normal_(p, std=0.1)
    missing, unexpected = theirs.load_state_dict(peft_lora_state(ours), strict=False)
    assert unexpected == [] and [k for k in missing if "lora_" in k] == []
    return ours, theirs

def trainable(m) -> int: return sum(p.numel() for p in m.parameters() if p.requires_grad)

def test_peft_picks_the_released_vision_modules(pair):
    "all-linear on CLIPVisionModelWithProjection: q, k, v, out_proj, fc1, fc2 of every layer and visual_projection, nothing else."
    _, theirs = pair
    adapted = {n.split(".lora_A")[0].removeprefix("base_model.model.") for n, _ in theirs.named_parameters() if ".lora_A" in n}
    layer = {f"vision_model.encoder.layers.{i}.{m}" for i in range(2) for m in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")}
    assert adapted == layer | {"visual_projection"}

def test_same_trainable_parameters_as_peft(pair):
    ours, theirs = pair
    w, f, d = 64, 256, 48
    expected = 2 * (4 * R * 2 * w + R * (w + f) * 2 + 4 * w + f + w) + R * (w + d)  # adapters and biases per layer; the projection
    assert trainable(ours) == trainable(theirs) == expected == 10_816
    biases = [n for n, p in ours.named_parameters() if p.requires_grad and "lora_" not in n]
    assert len(biases) == 2 * 4 and all(n.endswith("bias") for n in biases)  # in_proj (q, k, v), out_proj, c_fc, c_proj

def test_same_embeddings_as_peft(pair):
    ours, theirs = pair
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        e_ours, e_peft = image_embedding(ours, x), theirs(pixel_values=Normalize(*image_stats(ours))(x)).image_embeds
        base = copy.deepcopy(ours)
        for p in (p for n, p in lora_parameters(base).items() if "lora_B" in n): p.zero_()  # the tower without its updates
        e_base = image_embedding(base, x)
    assert (e_ours - e_base).abs().max() > 0.1  # the adapters matter...
    assert (e_ours - e_peft).abs().max() < 1e-5  # ...and act the same on both sides

def test_every_adapter_has_its_own_dropout(pair):
    "Training mode: the attention (q, k, v alone too), the MLP and the projection each vary from call to call; eval mode: none does."
    ours = copy.deepcopy(pair[0])
    blk, h, h4 = ours.visual.transformer.resblocks[0], torch.randn(2, 5, 64), torch.randn(2, 5, 256)
    calls = [lambda: blk.attn(h, h, h, need_weights=False)[0], lambda: blk.mlp.c_fc(h), lambda: blk.mlp.c_proj(h4), lambda: h[:, 0] @ ours.visual.proj]
    with torch.no_grad():
        ours.train(); assert all(not torch.equal(c(), c()) for c in calls)
        blk.attn.out.lora_B.zero_(); assert not torch.equal(calls[0](), calls[0]())
        ours.eval(); assert all(torch.equal(c(), c()) for c in calls)

def test_merge_gives_a_plain_open_clip_model_with_the_same_function(pair, tmp_path):
    ours = copy.deepcopy(pair[0]); x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(): before = image_embedding(ours, x)
    merged = merge_lora(copy.deepcopy(ours))
    assert not _is_lora(merged) and type(merged.visual.proj) is nn.Parameter
    assert list(merged.state_dict()) == list(small_clip().state_dict())
    with torch.no_grad(): assert (image_embedding(merged, x) - before).abs().max() < 1e-5
    back = small_clip(); back.load_state_dict(torch.load(save_encoder(ours, tmp_path / "enc.pt")))
    with torch.no_grad(): assert (image_embedding(back.eval(), x) - before).abs().max() < 1e-5
    assert _is_lora(ours)

def test_gelu_tower_and_bias_none():
    "A tower with nn.GELU; bias='none' trains the adapters only; a second add_lora is refused."
    m = add_lora(small_clip(quick_gelu=False), r=2, alpha=2, bias="none")
    assert {n for n, p in m.named_parameters() if p.requires_grad} == set(lora_parameters(m))
    with pytest.raises(ValueError, match="already has LoRA"): add_lora(m)
    with pytest.raises(ValueError, match="bias must be"): add_lora(small_clip(), bias="all")

def test_timm_tower_all_linear_with_separate_q_k_v():
    "A timm ViT with an attention-pool head (SigLIP's layout): every Linear adapted, fused qkv (kv) split in 3 (2) parts; merge is exact."
    from open_clip.timm_model import TimmModel
    torch.manual_seed(0)
    m = nn.Module(); m.visual = TimmModel("vit_tiny_patch16_224", embed_dim=192, pool="map", proj="none").eval()
    linears = {n: l for n, l in m.visual.named_modules() if isinstance(l, nn.Linear)}
    parts = lambda n: {"qkv": 3, "kv": 2}.get(n.rsplit(".", 1)[-1], 1)
    expected = sum(parts(n) * R * (l.in_features + l.out_features // parts(n)) + l.out_features for n, l in linears.items())
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad(): base = m.visual(x)
    add_lora(m, r=R, alpha=ALPHA).eval()
    assert trainable(m) == expected and len(lora_parameters(m)) == 2 * len(linears)
    assert tuple(m.visual.trunk.blocks[0].attn.qkv.delta.lora_B.shape) == (3, 192, R)
    with torch.no_grad(): assert torch.equal(m.visual(x), base)  # B = 0: no change yet
    for p in lora_parameters(m).values(): nn.init.normal_(p, std=0.02)
    with torch.no_grad(): out = m.visual(x); merged = merge_lora(copy.deepcopy(m)).visual(x)
    assert (out - base).abs().max() > 1e-2 and (merged - out).abs().max() < 1e-4
    with pytest.raises(ValueError, match="only open_clip VisionTransformer"): peft_lora_state(m)
