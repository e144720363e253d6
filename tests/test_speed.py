"The fast denoiser options and the benchmark's naive reference step give the plain step's numbers."
import pytest
import torch
from dcr_nb.conditioning import standin_unet, denoise_pairs
from conftest import load_script


@pytest.mark.parametrize("kw,chunk", [({}, None), ({"checkpoint": True}, 5), ({"channels_last": True, "prefix": False}, 4)])
def test_fast_denoise_matches_plain(kw, chunk):
    from dcr_nb.speed import FastDenoise
    torch.manual_seed(0)
    unet = standin_unet(block_out_channels=(8, 16, 16), cross_attention_dim=16).requires_grad_(False).eval()
    B = 3; x, t = torch.randn(B, 3, 32, 32), torch.randint(0, 1000, (B,))
    cond = torch.randn(B, 77, 16, requires_grad=True)
    i, j = torch.arange(B).repeat_interleave(B), torch.arange(B).repeat(B)
    def run(fn):
        p = denoise_pairs(fn, x, t, cond, i, j, chunk)
        return p.detach(), torch.autograd.grad((p * p.detach().sign()).sum(), cond)[0]
    p0, g0 = run(lambda a, b, c: unet(a, b, encoder_hidden_states=c).sample)
    p, g = run(FastDenoise(unet, **kw))
    torch.testing.assert_close(p, p0, atol=1e-5, rtol=1e-4); torch.testing.assert_close(g, g0, atol=1e-5 * g0.abs().max().item(), rtol=1e-4)


def test_benchmark_steps_agree(capsys):
    "The naive reference step of benchmarks/dcr_step.py and the project's step give the same loss (the check the benchmark prints)."
    m = load_script("benchmarks/dcr_step.py")
    m.check_equal(dict(m.OURS, device="cpu", B=3, chunk=4))
    out = capsys.readouterr().out
    import json
    r = json.loads(out.strip().splitlines()[-1][len("RESULT "):])
    assert r["loss_diff"] < 1e-5 and r["grad_rel_diff"] < 1e-4


@pytest.mark.parametrize("ks,msg", [("0", "between 1 and batch_size - 1 = 7"), ("8", "between 1 and batch_size - 1 = 7"),
                                    ("1,x", "comma-separated integers"), ("", "between 1 and")])
def test_negatives_rejects_bad_k(ks, msg):
    with pytest.raises(SystemExit) as e: load_script("benchmarks/negatives.py").main(["--ks", ks])
    assert msg in str(e.value)


def test_negatives_config_is_the_pipelines(root):
    "The K run's stage config is dvc.yaml's stage<s>@dcr with only num_negatives and the output paths changed."
    import yaml
    from pathlib import Path
    p, m = yaml.safe_load((root / "params.yaml").read_text()), load_script("benchmarks/negatives.py")
    for s in (1, 2):
        c = m.stage_config(p, s, 3, Path("/tmp/x")).to_dict()
        st, o, d = p[f"stage{s}"], p["objectives"]["dcr"], p["dcr"] | {"seed": p["seeds"][0]}
        assert c["num_negatives"] == 3 and c["objective"] == "dcr" and c["stage"] == s
        assert (c["steps"], c["lr"], c["batch_size"], c["tau"], c["seed"], c["chunk_size"]) == (st["steps"], st["lr"], st["batch_size"], o["tau"], d["seed"], d["chunk_size"])
        assert c["lora_r"] == (st["lora_r"] if s == 2 else 0) and c["out"] == f"/tmp/x/stage{s}"


@pytest.mark.parametrize("args,msg", [(["--steps", "0"], "--steps 0: must be >= 1"), (["--rounds", "0"], "--rounds 0: must be >= 1"),
                                      (["--batch-size", "-1"], "--batch-size -1: must be >= 1")])
def test_denoiser_step_rejects_bad_args(args, msg):
    "benchmarks/denoiser_step.py refuses a bad count before loading anything."
    with pytest.raises(SystemExit) as e: load_script("benchmarks/denoiser_step.py").main(args)
    assert msg in str(e.value)


def test_denoiser_step_batches_are_the_worlds_scenes():
    "The benchmark's batches are rendered scenes in [0, 1] with their full captions, `batch_size` a batch."
    m = load_script("benchmarks/denoiser_step.py")
    bs = m.batches(2, 3)
    assert len(bs) == 2 and all(b["images"].shape == (3, 3, 32, 32) and len(b["captions"]) == 3 for b in bs)
    x = torch.cat([b["images"] for b in bs]); assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.05
    assert len({c for b in bs for c in b["captions"]}) == 6  # six different scenes, six captions
