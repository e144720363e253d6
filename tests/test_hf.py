"""`python -m dcr_nb.hf`: export an open_clip checkpoint to a Hugging Face folder and import it back (the notebook checks the rest)."""
import subprocess, sys
import torch
from dcr_nb.encoder import create_encoder, save_encoder
from dcr_nb.hf import main

def hf_cli(*args, cwd):
    "Run `python -m dcr_nb.hf ARGS`; returns the CompletedProcess."
    return subprocess.run([sys.executable, "-m", "dcr_nb.hf", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)

def test_cli_round_trip(root, tmp_path):
    torch.manual_seed(0); clip = create_encoder("tiny", random_init=True)
    ckpt = save_encoder(clip, tmp_path / "clip.pt")
    r = hf_cli("export", ckpt, "tiny", tmp_path / "hf", cwd=root)
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    r = hf_cli("import", tmp_path / "hf", "tiny", tmp_path / "back.safetensors", "--pretrained", ckpt, cwd=root)
    assert r.returncode == 0, r.stderr
    back = create_encoder("tiny", pretrained=tmp_path / "back.safetensors").state_dict()
    assert all(torch.equal(t, back[k]) for k, t in clip.state_dict().items())  # image tower from the folder, the rest from --pretrained

def test_cli_names_the_missing_file(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    assert main(["import", str(tmp_path / "hf"), "tiny", str(tmp_path / "out.pt"), "--pretrained", str(tmp_path / "none.pt")]) == 1
    assert "has no config.json" in capsys.readouterr().err and not (tmp_path / "out.pt").exists()

def test_siglip_round_trip(tmp_path, capsys):
    "A SigLIP-layout tower (the paper profile's stand-in) exports as a SiglipVisionModel folder that transformers loads whole and that imports back bit for bit."
    from transformers import SiglipVisionModel
    from dcr_nb.paper_inputs import STANDIN_SIGLIP  # registers the stand-in with timm and open_clip
    from dcr_nb.hf import hf_differences, import_hf
    torch.manual_seed(0); clip = create_encoder(STANDIN_SIGLIP, random_init=True).eval()
    with torch.no_grad():
        for p in clip.visual.parameters(): p.add_(0.02 * torch.randn_like(p))  # LayerNorms off their initial ones and zeros
    ckpt = save_encoder(clip, tmp_path / "clip.pt")
    assert main(["export", str(ckpt), STANDIN_SIGLIP, str(tmp_path / "hf")]) == 0
    _, info = SiglipVisionModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert max(hf_differences(clip, tmp_path / "hf", torch.rand(2, 3, 32, 32)).values()) < 1e-5
    back = import_hf(tmp_path / "hf", STANDIN_SIGLIP, pretrained=ckpt).state_dict()
    assert all(torch.equal(t, back[k]) for k, t in clip.state_dict().items())
    assert main(["import", str(tmp_path / "hf"), "tiny", str(tmp_path / "x.pt"), "--pretrained", str(ckpt)]) == 1
    assert "is a SigLIP vision folder, but tiny's image tower" in capsys.readouterr().err
