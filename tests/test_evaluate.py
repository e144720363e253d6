"""Evaluation: MMVP-VLM scoring rules, the batched evaluator end to end, and D-Ability metrics on known answers."""
import json
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from dcr_nb.evaluate import (class_text_features, cluster_accuracy, cluster_metrics, d_ability, encode_images,
                             eval_transform, evaluate_mmvp, evaluating, linear_probe,
                             pair_probabilities, score_mmvp, zero_shot_accuracy)
from dcr_nb.losses import grad_cosine_summary

HEADER = "Question ID,Type,Statement"
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def write_folder(root, rows):
    "An MMVP-VLM folder from rows (qid, Type, statement, colour of the image); images go in each pair's first Type."
    lines = [HEADER]
    for i, (q, typ, st, col) in enumerate(rows):
        d = root / "MLLM_VLM Images" / rows[i - i % 2][1]; d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 14), COLOURS[col]).save(d / f"{q}.jpg", quality=100)
        lines.append(f"{q},{typ},{st}")
    (root / "Questions.csv").write_text("\n".join(lines) + "\n")
    return root


class ColourCLIP(nn.Module):
    "Known answers: image feature = mean normalised colour; the 'tokens' of a statement are the colour it names."
    def __init__(self):
        super().__init__()
        self.visual = nn.Module(); self.visual.image_size = 8
        self.visual.preprocess_cfg = dict(size=(8, 8), mean=(0.5, 0.4, 0.4), std=(0.25, 0.25, 0.25))
        self.logit_scale = nn.Parameter(torch.tensor(np.log(100.0)))
    def encode_image(self, x): return x.mean((2, 3))
    def encode_text(self, c): return (c - torch.tensor([0.5, 0.4, 0.4])) / 0.25


def colour_tokens(texts):
    return torch.tensor([[v / 255 for v in next(c for w, c in COLOURS.items() if w in t)] for t in texts])


# --- MMVP-VLM rules ---------------------------------------------------------------------------------------------

def test_pair_needs_both_statements():
    r = score_mmvp([[0.9, 0.1], [0.9, 0.9], [0.1, 0.1], [0.2, 0.8]], ["A"] * 4, [[1, 2], [3, 4], [5, 6], [7, 8]])
    assert r.per_category == {"A": 25.0} and r.mean == 25.0
    assert r.table.correct.tolist() == [True, True, True, False, False, True, False, False]
    assert r.table.pair_correct.tolist() == [True, True] + [False] * 6


def test_tie_picks_image_2_and_truth_follows_qid_parity():
    r = score_mmvp([[0.5, 0.5]], ["A"], [[1, 2]])
    assert r.table.prediction.tolist() == [2, 2] and r.table.ground_truth.tolist() == [1, 2]
    assert r.mean == 0.0  # statement 1 wrong, statement 2 right: the pair scores zero


def test_mean_is_over_categories_in_file_order():
    r = score_mmvp([[0.9, 0.1]] * 3 + [[0.1, 0.1]], ["B", "A", "A", "A"], [[1, 2], [3, 4], [5, 6], [7, 8]])
    assert list(r.per_category) == ["B", "A"]
    assert r.per_category["B"] == 100.0 and r.per_category["A"] == pytest.approx(200 / 3)
    assert r.mean == pytest.approx((100 + 200 / 3) / 2)  # not the pooled 75%


def test_pair_probabilities_softmax_over_two_images():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    np.testing.assert_allclose(pair_probabilities(logits), [[1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))]])
    with pytest.raises(ValueError, match="n_pairs, 2, 2"): pair_probabilities(torch.zeros(2, 3, 2))


def test_evaluator_known_answers(tmp_path):
    rows = [(1, "Color", "a red box", "red"), (2, "Color", "a blue box", "blue"),     # right
            (3, "Color", "a red box", "red"), (4, "Color", "a red box", "green"),     # one statement right: zero
            (5, "Texts", "a green box", "green"), (6, "Texts", "a blue box", "red"),  # one statement right: zero
            (7, "Texts", "a blue box", "blue"), (8, "Texts", "a green box", "green")]  # right
    r = evaluate_mmvp(ColourCLIP(), colour_tokens, write_folder(tmp_path / "mmvp", rows), batch_size=3, progress=False)
    assert r.per_category == {"Color": 50.0, "Texts": 50.0} and r.mean == 50.0
    assert r.table.qid.tolist() == list(range(1, 9))
    assert r.table.prediction.tolist() == [1, 2, 1, 1, 1, 1, 1, 2]
    assert r.table.statement[0] == "a photo of a red box"


def test_evaluator_rejects_bad_folder(tmp_path):
    folder = write_folder(tmp_path / "mmvp", [(1, "Color", "a red box", "red"), (3, "Color", "a blue box", "blue")])
    with pytest.raises(ValueError, match="qids"): evaluate_mmvp(ColourCLIP(), colour_tokens, folder, progress=False)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    "A very small random open_clip model from a config registered in a temporary folder."
    import open_clip
    d = tmp_path_factory.mktemp("cfg")
    (d / "eval-test-vit.json").write_text(json.dumps({"embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(d)
    torch.manual_seed(0)
    return open_clip.create_model("eval-test-vit", pretrained=None), open_clip.get_tokenizer("eval-test-vit")


def test_batched_evaluator_matches_reference_loop(tmp_path, tiny_clip):
    model, tok = tiny_clip
    rng = np.random.default_rng(0)
    rows = []
    for k in range(6):
        cat = ["Orientation", "Texts"][k // 3]
        for q in (2 * k + 1, 2 * k + 2): rows.append((q, cat, f"a {['red', 'green', 'blue'][q % 3]} shape {q}", ["red", "green", "blue"][rng.integers(3)]))
    folder = write_folder(tmp_path / "mmvp", rows)
    r = evaluate_mmvp(model, tok, folder, batch_size=5, progress=False)
    pre, ref = eval_transform(model), []
    with evaluating(model):
        for k in range(6):
            ims = [pre(Image.open(folder / "MLLM_VLM Images" / rows[2 * k][1] / f"{q}.jpg").convert("RGB")) for q in (2 * k + 1, 2 * k + 2)]
            img = F.normalize(model.encode_image(torch.stack(ims)), dim=-1)
            for s in (rows[2 * k][2], rows[2 * k + 1][2]):
                txt = F.normalize(model.encode_text(tok(["a photo of " + s])), dim=-1)
                ref.append((model.logit_scale.exp() * txt @ img.T).softmax(-1)[0, 0].item())
    np.testing.assert_allclose(r.table.p_image1, ref, atol=1e-5)
    assert list(r.per_category) == ["Orientation", "Texts"] and len(r.table) == 12


def test_encode_images_restores_training_mode(tiny_clip):
    model, _ = tiny_clip
    model.train()
    f = encode_images(model, torch.rand(5, 3, 24, 24), batch_size=2, progress=False)  # resized to 16 px
    assert f.shape == (5, 16) and model.training and torch.allclose(f.norm(dim=-1), torch.ones(5), atol=1e-5)
    model.eval()


def test_template_ensembling(tiny_clip):
    model, tok = tiny_clip
    cf = class_text_features(model, tok, ["a cat", "a dog"], ["a photo of {}", "{} drawn"])
    with evaluating(model):
        for i, c in enumerate(["a cat", "a dog"]):
            t = F.normalize(model.encode_text(tok([f"a photo of {c}", f"{c} drawn"])), dim=-1).mean(0)
            torch.testing.assert_close(cf[i], F.normalize(t, dim=0), atol=1e-5, rtol=0)


# --- D-Ability on features with known answers -------------------------------------------------------------------

def test_cluster_accuracy_hungarian():
    assert cluster_accuracy([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]) == 1.0
    assert cluster_accuracy([0, 0, 1, 1], [1, 1, 1, 0]) == 0.75
    assert cluster_accuracy([0, 1, 2, 3], [7, 7, 7, 7]) == 0.25


def test_clustering_separable_permuted_random():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400); centres = 5 * np.eye(4, 8)
    x = centres[y] + 0.1 * rng.normal(size=(400, 8))
    assert cluster_metrics(x, y) == {"nmi": 1.0, "acc": 1.0, "ari": 1.0}
    assert cluster_metrics(x, (y + 1) % 4) == {"nmi": 1.0, "acc": 1.0, "ari": 1.0}
    m = cluster_metrics(rng.normal(size=(1500, 8)), rng.integers(0, 4, 1500))
    assert m["nmi"] < 0.02 and abs(m["ari"]) < 0.02 and m["acc"] < 0.35


def test_zero_shot_and_probe():
    rng = np.random.default_rng(2)
    C = rng.normal(size=(3, 8)); y = rng.integers(0, 3, 300)
    assert zero_shot_accuracy(C[y] + 0.05 * rng.normal(size=(300, 8)), C, y) == 1.0
    assert linear_probe(C[y] + 0.1 * rng.normal(size=(300, 8)), y, C[y[:100]], y[:100]) == 1.0
    acc = linear_probe(rng.normal(size=(600, 8)), rng.integers(0, 3, 600), rng.normal(size=(1500, 8)), rng.integers(0, 3, 1500))
    assert abs(acc - 1 / 3) < 0.06
    m = d_ability(C[y], y, class_features=C, probe_features=C[y], probe_labels=y)
    assert m == {"zero_shot_acc": 1.0, "cluster_nmi": 1.0, "cluster_acc": 1.0, "cluster_ari": 1.0, "linear_probe_acc": 1.0}


def test_grad_cosine_summary():
    s = grad_cosine_summary([-0.3, -0.2, 0.1, 0.0, float("inf")])
    assert (s["n"], s["n_nonfinite"], s["frac_negative"]) == (4, 1, 0.5)
    assert s["min"] == -0.3 and s["max"] == 0.1 and s["median"] == pytest.approx(-0.1)
