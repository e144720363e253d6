"""The training objectives as a trainer uses them: one call signature, named terms, mixed precision, chunking."""
import math
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from dcr_nb.losses import DCRLoss, NaiveLoss, ReconLoss, dcr_loss, grad_cosine, info_nce, sample_negatives

SCHED = DDPMScheduler(num_train_timesteps=1000)

class Toy(torch.nn.Module):
    "A tiny denoiser that reads its condition: (N,C,H,W), (N,), (N,L,D) -> (N,C,H,W)."
    def __init__(self, C=3, D=8):
        super().__init__(); self.conv, self.lin = torch.nn.Conv2d(C, C, 1), torch.nn.Linear(D, C)
    def forward(self, x, t, c): return self.conv(x) + torch.tanh(self.lin(c.mean(1)))[:, :, None, None]

def batch(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(B, 3, 4, 4, generator=g), torch.randn(B, 3, 4, 4, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    enc = torch.nn.Linear(5, 8)  # stands in for the trainable encoder + projector
    feats, feats_pos = torch.randn(B, 2, 5, generator=g), torch.randn(B, 2, 5, generator=g)
    cond, cond_pos = enc(feats), enc(feats_pos)  # (B, L, D)
    return enc, dict(x0=x0, noise=noise, t=t, x_t=SCHED.add_noise(x0, noise, t), cond=cond, cond_pos=cond_pos,
                     emb=cond.mean(1), emb_pos=cond_pos.mean(1))

@pytest.mark.parametrize("obj", [ReconLoss(), NaiveLoss(lam=0.3), DCRLoss(), DCRLoss(num_negatives=1, recon_weight=1.0)])
def test_one_signature_named_terms_and_probe(obj):
    torch.manual_seed(0); den = Toy()
    enc, b = batch()
    out = obj(den, scheduler=SCHED, **b)  # every objective takes the same keyword call
    assert "loss" in out and out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    if obj.conflict_terms:
        cos = grad_cosine(*(out[k] for k in obj.conflict_terms), enc.parameters())
        assert -1 <= cos <= 1
    out["loss"].backward()  # the probe kept the graph
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())

def test_chunking_does_not_change_dcr():
    torch.manual_seed(0); den = Toy(); _, b = batch(5)
    a, c = DCRLoss()(den, scheduler=SCHED, **b)["loss"], DCRLoss(chunk_size=4)(den, scheduler=SCHED, **b)["loss"]
    assert torch.allclose(a, c, atol=1e-6)

def test_half_precision_is_reduced_in_float32():
    g = torch.Generator().manual_seed(1)
    ins = [torch.randn(*s, 3, 8, 8, generator=g).bfloat16() for s in [(4,), (4, 2), (4, 3)]]
    lo = dcr_loss(*ins)
    assert lo.dtype == torch.float32
    assert torch.allclose(lo, dcr_loss(*(x.double() for x in ins)).float(), atol=1e-5)

def test_dcr_loss_bounds_and_cross_entropy_form():
    g = torch.Generator().manual_seed(2)
    a, p, n = torch.randn(6, 10, generator=g), torch.randn(6, 2, 10, generator=g), torch.randn(6, 5, 10, generator=g)
    per = dcr_loss(a, p, n, reduction="none")
    assert (per >= math.log(2) - 1e-6).all()
    logits = torch.cat([F.cosine_similarity(a[:, None], p, -1), F.cosine_similarity(a[:, None], n, -1)], 1) / 0.1
    ce = (F.cross_entropy(logits, torch.zeros(6, dtype=torch.long), reduction="none")
          + F.cross_entropy(logits, torch.ones(6, dtype=torch.long), reduction="none")) / 2
    assert torch.allclose(per, ce, atol=1e-5)

def test_negatives_sampling_and_errors():
    idx = sample_negatives(64, 5, torch.Generator().manual_seed(0))
    assert idx.shape == (64, 5) and not (idx == torch.arange(64)[:, None]).any()
    assert all(len(set(r)) == 5 for r in idx.tolist())
    with pytest.raises(ValueError, match="at least 2"): sample_negatives(1)
    with pytest.raises(ValueError, match="at least 2"): info_nce(torch.randn(1, 3), torch.randn(1, 3))
