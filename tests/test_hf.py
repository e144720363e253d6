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
