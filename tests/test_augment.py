"""The positive view: the released one (torchvision's ColorJitter on CLIP-normalised tensors, then flips and crop) and ours
(the same on [0, 1] pixels); the crop's aspect ratio is the released 0.9-1.1 in both."""
import itertools
import pytest, torch
import torch.nn.functional as F
import torchvision.transforms.functional as TV
from dcr_nb.encoder import Augment, Normalize
from open_clip import OPENAI_DATASET_MEAN as MEAN, OPENAI_DATASET_STD as STD

OPS = [TV.adjust_brightness, TV.adjust_contrast, TV.adjust_saturation, TV.adjust_hue]

def torchvision_jitter(x, fac, orders):
    "torchvision's functional colour ops (those the released ColorJitter calls), one image at a time, each in its order."
    out = []
    for im, f, order in zip(x, fac, orders):
        for k in order: im = OPS[k](im, f[k].item())
        out.append(im)
    return torch.stack(out)

def factors(B, g):
    "Per-image factors (B, 4) in ColorJitter(0.1, 0.1, 0.1, 0.05)'s ranges."
    return torch.cat([1 + 0.1 * (2 * torch.rand(B, 3, generator=g) - 1), 0.05 * (2 * torch.rand(B, 1, generator=g) - 1)], 1)

def test_released_jitter_is_torchvisions_on_normalised_tensors():
    "Every order of the four ops (one per image), fixed factors: equal to torchvision on the normalised images, clamps included."
    g = torch.Generator().manual_seed(0)
    orders = [list(o) for o in itertools.permutations(range(4))]  # all 24
    x = torch.rand(len(orders), 3, 16, 16, generator=g)
    xn, fac = Normalize(MEAN, STD)(x), factors(len(orders), g)
    got = Augment().jitter(xn, fac, orders)
    assert (got - torchvision_jitter(xn, fac, orders)).abs().max() < 1e-5
    assert (got - xn).abs().max() > 1  # the clamps acted: normalised values reach -1.8
    assert (Augment().jitter(x, fac, orders) - torchvision_jitter(x, fac, orders)).abs().max() < 1e-5  # and on pixels

def test_released_forward_clamps_in_normalised_space_and_returns_pixels():
    x = torch.rand(4, 3, 32, 32); norm = Normalize(MEAN, STD)
    still = dict(brightness=0, contrast=0, saturation=0, hue=0, hflip=0, vflip=0, scale=(1, 1), ratio=(1, 1))
    released = Augment(**still, space="normalized", mean=MEAN, std=STD)(x)
    assert (released - (norm(x).clamp(0, 1) * norm.std + norm.mean)).abs().max() < 1e-5
    view = Augment(space="normalized", mean=MEAN, std=STD)(x, torch.Generator().manual_seed(0))
    lo, hi = norm.mean, norm.mean + norm.std
    assert ((view >= lo - 1e-5) & (view <= hi + 1e-5)).all()  # every released pixel in [mean, mean + std] of its channel
    with pytest.raises(ValueError, match="mean and std"): Augment(space="normalized")
    with pytest.raises(ValueError, match="space must be"): Augment(space="hsv")

@pytest.mark.parametrize("H, W", [(32, 32), (224, 224)])  # square, as every tower here takes
def test_crop_ratio_and_scale_stay_in_the_released_ranges(H, W):
    th = Augment().crop_theta(20_000, H, W, "cpu", torch.Generator().manual_seed(0))
    w, h = th[:, 0, 0].abs() * W, th[:, 1, 1].abs() * H  # the crop's size in pixels
    ratio, scale = w / h, w * h / (H * W)
    fallback = (w == W) & (h == H)  # ten rejected tries: the whole image, as torchvision
    assert ratio[~fallback].min() >= 0.9 - 1e-6 and ratio[~fallback].max() <= 1.1 + 1e-6
    assert scale.min() >= 0.9 - 1e-6 and scale.max() <= 1 + 1e-6
    assert ratio.max() > 1.08 and ratio.min() < 0.92  # the whole range is drawn
    old = Augment(ratio=(3 / 4, 4 / 3)).crop_theta(20_000, H, W, "cpu", torch.Generator().manual_seed(0))
    assert (old[:, 0, 0].abs() * W / (old[:, 1, 1].abs() * H)).max() > 1.1  # the old default did leave the range

def old_pixel_view(x, seed):
    "The pixel-space view as it was (crop and flips, then jitter with one order per batch), with torchvision's ops for the jitter."
    g, (B, _, H, W) = torch.Generator().manual_seed(seed), x.shape
    theta = Augment().crop_theta(B, H, W, "cpu", g)  # the same draws in the same order: theta, factors, order
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear", padding_mode="border", align_corners=False)
    fac = factors(B, g)
    return torchvision_jitter(x, fac, [torch.randperm(4, generator=g).tolist()] * B)

def test_pixel_mode_is_unchanged_apart_from_the_ratio():
    x = torch.rand(8, 3, 32, 32)
    a = Augment()
    assert (a.jit, a.hflip, a.vflip, a.scale, a.ratio, a.space) == ((0.1, 0.1, 0.1, 0.05), 0.5, 0.5, (0.9, 1.0), (0.9, 1.1), "pixel")
    for seed in range(3):
        assert (a(x, torch.Generator().manual_seed(seed)) - old_pixel_view(x, seed)).abs().max() < 1e-5
