"""Pinned numerics (nbs/00b_stage): the shipped CLIP's evaluation and a DCR training step give the same bits under two
instruction-set caps, as on two kinds of x86-64 CPU; with the libraries' own (native) choices they do not."""
import hashlib, json, os, subprocess, sys
import pytest
from conftest import ROOT, load_script
from dcr_nb.stage import NUMERICS_ENV, NUMERICS_THREADS, numerics_env

num = load_script("benchmarks/numerics.py")  # its caps and the environment of a setting, as the benchmark builds them

# A tiny evaluation of the shipped CLIP (image and text features, zero-shot, k-means, linear probe) and one stage-1 update
# of the projector on the shipped denoiser (argument `step`), on fixed synthetic images: MD5s of what they produce, and the numerics state.
CHILD = r'''
import hashlib, json, sys
import numpy as np, torch
from dcr_nb.stage import numerics_state
from dcr_nb.pretrain import load_clip, load_standin_diffusion
from dcr_nb.encoder import get_tokenizer
from dcr_nb.evaluate import encode_images, encode_texts, d_ability
h = lambda *a: hashlib.md5(b"".join(np.ascontiguousarray(np.asarray(x, dtype=np.float64)).tobytes() for x in a)).hexdigest()
r = np.random.default_rng(0)
images = torch.from_numpy(r.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8))
labels = np.arange(48) % 4
clip, tok = load_clip("lit", "world/weights/clip.safetensors", "world"), get_tokenizer("lit")
feats = encode_images(clip, images, 16, progress=False)
text = encode_texts(clip, tok, [f"a photo of a {c}" for c in ("shirt", "shoe", "bag", "dress")])
m = d_ability(feats, labels, text, feats[:24], labels[:24], seed=0, n_init=2)
out = {"features": h(feats), "text": h(text), "metrics": h([v for _, v in sorted(m.items())])}
if "step" in sys.argv[1:]:
  from dcr_nb.dcr_stages import DCRStageConfig, dcr_task
  cfg = DCRStageConfig(stage=1, steps=1, batch_size=2, objective="dcr", tau=0.1, lam=0.0, num_negatives=1, chunk_size=64, fast=True)
  task = dcr_task(cfg, clip, load_standin_diffusion("lit", clip, "world/weights"))
  opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3)
  torch.manual_seed(0)
  loss = task({"images": images[:2].permute(0, 3, 1, 2).float() / 255, "k": 0})["loss"]; loss.backward(); opt.step()
  out["step"] = h(loss.item(), *[p.detach() for p in task.builder.parameters()])
print(json.dumps({"hashes": out, "state": numerics_state()}))
'''

def run_children(*settings: tuple[str, str], step: bool = True) -> list[dict]:
    "CHILD's result in a fresh process per (numerics mode, instruction-set cap), as `benchmarks/numerics.py` sets them; run side by side."
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, *(["step"] if step else [])], env=num.setting_env(m, c), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m, c in settings]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs): assert p.returncode == 0, err[-3000:]
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]

@pytest.fixture(scope="module")
def cap() -> str:
    "The instruction-set cap just below this CPU's: the other kind of CPU the test stands in for."
    flags = num.cpu_flags()
    if "avx2" not in flags: pytest.skip("pinned numerics need a CPU with AVX2")
    return num.auto_cap(flags)

def test_pinned_numerics_give_the_same_bits_under_two_instruction_set_caps(cap):
    a, b = run_children(("pinned", "none"), ("pinned", cap))
    for s in (a["state"], b["state"]):  # the pin took effect in both, whatever the outer environment said
        assert (s["mode"], s["pytorch"], s["threads"], s["onednn"], s["nnpack"], s["mkl"]) == ("pinned", "AVX2", NUMERICS_THREADS, False, False, "COMPATIBLE"), s
    assert a["hashes"] == b["hashes"]

def test_native_numerics_part_under_the_cap(cap):
    "The cap reaches the computation: without the pin the same evaluation gives other bits (so the test above can fail)."
    a, b = run_children(("native", "none"), ("native", cap), step=False)  # the evaluation alone already parts
    assert a["state"]["pytorch"] != b["state"]["pytorch"] and a["state"]["onednn"]
    assert a["hashes"]["features"] != b["hashes"]["features"], (a, b)

def test_the_stage_runner_pins_the_kernel_and_rejects_an_unknown_mode(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("import os, dcr_nb.core\nfrom dcr_nb.stage import numerics_state\nprint(numerics_state(), os.environ['MKL_NUM_THREADS'])")]
    nbformat.write(nb, tmp_path / "n.ipynb")
    env = {k: v for k, v in os.environ.items() if k not in numerics_env("pinned")} | {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"}
    run = lambda e: subprocess.run([sys.executable, "-m", "dcr_nb.stage", str(tmp_path / "n.ipynb"), str(tmp_path / "out.ipynb")],
                                   env=e, cwd=ROOT, capture_output=True, text=True, timeout=300)
    r = run(env)  # an outer environment that asks for other kernels and one thread: the runner's pin wins
    assert r.returncode == 0, r.stderr[-2000:]
    printed = "".join("".join(o.get("text", "")) for o in json.loads((tmp_path / "out.ipynb").read_text())["cells"][0]["outputs"])
    assert "'mode': 'pinned', 'pytorch': 'AVX2', 'threads': 2, 'onednn': False, 'nnpack': False, 'mkl': 'COMPATIBLE', 'openblas': 'Haswell'} 2" in printed, printed
    r = run(env | {NUMERICS_ENV: "fast"})
    assert r.returncode == 2 and "$DCR_NB_NUMERICS='fast': choose pinned" in r.stderr, r.stderr
