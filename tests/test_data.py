"""The data module: deterministic scenes, the MMVP folder format and its validator, and readers that survive bad data."""
import csv, dataclasses, hashlib, io, shutil, tarfile
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from dcr_nb.core import ConfigError
from dcr_nb.data import (ATTRIBUTES, CATEGORY_ATTRIBUTE, MMVP_CATEGORIES, MMVP_IMAGES, MMVPFormatError,
                         PrepareConfig, SceneDataset, benchmark_specs, load_eval_set, prepare, read_mmvp,
                         render, render_scenes, sample_spec, scene_rng, write_mmvp)
from dcr_nb.readers import ImageFolderDataset, TarShardDataset
from dcr_nb.fetch import load_fashion_mnist

@pytest.fixture(scope="module")
def test_split(): return load_fashion_mnist("test")

def img_bytes(seed, fmt="JPEG", h=40, w=56):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()

def make_shard(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name); info.size = len(data); tf.addfile(info, io.BytesIO(data))

# --- scenes -------------------------------------------------------------------------------------------------
def test_scene_i_depends_only_on_seed_and_index(test_split):
    imgs, labels = test_split
    rates = dict(color=0.5, count=0.5, text=0.5)
    a = render_scenes(imgs, labels, 40, seed=3, rates=rates)
    b = render_scenes(imgs, labels, 5, seed=3, rates=rates, start=20)
    for k in a: np.testing.assert_array_equal(a[k][20:25], b[k])
    assert not np.array_equal(render_scenes(imgs, labels, 5, seed=4)["images"], a["images"][:5])
    assert a["images"].shape == (40, 32, 32, 3) and a["images"].dtype == np.uint8

def test_prepare_is_byte_identical_and_readable(tmp_path):
    cfg = PrepareConfig(n_scenes=60, pairs_per_category=2, n_probe=20, image_size=48)
    digests = []
    for d in ("a", "b"):
        prepare(cfg, tmp_path / d, log=lambda *_: None)
        digests.append({str(p.relative_to(tmp_path / d)): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((tmp_path / d).rglob("*")) if p.is_file()})
    assert digests[0] == digests[1]
    ds = SceneDataset(tmp_path / "a" / "scenes.npz")
    x, short, full = ds[0]
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert isinstance(short, str) and full.startswith("a photo of ")
    ev = load_eval_set(tmp_path / "a" / "eval_test.npz")
    assert ev["images"].shape == (10000, 3, 48, 48) and len(ev["class_phrases"]) == 10
    assert len(read_mmvp(tmp_path / "a" / "mmvp", MMVP_CATEGORIES)) == 18

def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="p_color = -0.1"): PrepareConfig(p_color=-0.1)
    with pytest.raises(ConfigError, match=r"p_neutral = 1.5 is not in \[0, 1\]"): PrepareConfig(p_neutral=1.5)
    with pytest.raises(ConfigError, match="n_scenes = 0 must be positive"): PrepareConfig(n_scenes=0)

# --- benchmark --------------------------------------------------------------------------------------------------
@pytest.fixture
def mmvp(tmp_path, test_split):
    imgs, labels = test_split
    return write_mmvp(tmp_path / "mmvp", benchmark_specs(labels, 2), imgs)

def test_benchmark_pairs_differ_in_their_category_only(test_split):
    for cat, s1, s2 in benchmark_specs(test_split[1], 4, seed=1):
        assert [a for a in ATTRIBUTES if getattr(s1, a) != getattr(s2, a)] == [CATEGORY_ATTRIBUTE[cat]]

def test_mmvp_folder_format(mmvp):
    rows = list(csv.reader(open(mmvp / "Questions.csv", newline="")))
    assert rows[0] == ["Question ID", "Type", "Statement"] and len(rows) == 1 + 9 * 2 * 2
    assert [r[1] for r in rows[1::4]] == list(MMVP_CATEGORIES)
    for qid, typ, _ in rows[1:]:
        first = int(qid) if int(qid) % 2 else int(qid) - 1
        assert (mmvp / MMVP_IMAGES / rows[first][1] / f"{qid}.jpg").is_file()
    pairs = read_mmvp(mmvp)
    assert [(p.qid1, p.qid2) for p in pairs] == [(2 * k + 1, 2 * k + 2) for k in range(18)]
    assert pairs[0].statement1 == rows[1][2] and pairs[0].image2.name == "2.jpg"

def rewrite_rows(folder, fn):
    p = folder / "Questions.csv"; rows = list(csv.reader(open(p, newline="")))
    buf = io.StringIO(); csv.writer(buf, lineterminator="\n").writerows(fn(rows)); p.write_text(buf.getvalue())

def test_mmvp_wrong_header(mmvp):
    rewrite_rows(mmvp, lambda r: [["ID", "Type", "Statement"]] + r[1:])
    with pytest.raises(MMVPFormatError, match=r"Questions.csv, line 1: header is 'ID,Type,Statement'"): read_mmvp(mmvp)

def test_mmvp_odd_rows(mmvp):
    rewrite_rows(mmvp, lambda r: r[:-1])
    with pytest.raises(MMVPFormatError, match=r"35 data rows, an odd number: the last \(line 36\)"): read_mmvp(mmvp)

def test_mmvp_missing_image(mmvp):
    (mmvp / MMVP_IMAGES / "Texts" / "30.jpg").unlink()
    with pytest.raises(MMVPFormatError, match=r"lines 30-31 \(qids 29, 30\): missing image .*Texts/30.jpg"): read_mmvp(mmvp)

def test_mmvp_unknown_type(mmvp):
    rewrite_rows(mmvp, lambda r: r[:5] + [[r[5][0], "Colour", r[5][2]]] + r[6:])
    with pytest.raises(MMVPFormatError, match=r"line 6 \(qid 5\): unknown Type 'Colour': there is no folder"): read_mmvp(mmvp)
    shutil.copytree(mmvp / MMVP_IMAGES / "Presence of Specific Features", mmvp / MMVP_IMAGES / "Colour")
    assert len(read_mmvp(mmvp)) == 18  # a folder exists: fine without a category list ...
    with pytest.raises(MMVPFormatError, match=r"line 6 \(qid 5\): unknown Type 'Colour', not one of"): read_mmvp(mmvp, MMVP_CATEGORIES)

def test_mmvp_missing_csv(tmp_path):
    with pytest.raises(MMVPFormatError, match="Questions.csv: not found"): read_mmvp(tmp_path)

# --- readers ------------------------------------------------------------------------------------------------------
def test_tar_reader_skips_and_reports_bad_members(tmp_path):
    good = img_bytes(0)
    make_shard(tmp_path / "00000.tar", [
        ("00000000.jpg", good), ("00000000.txt", b"first caption"), ("00000000.json", b"{}"),
        ("00000001.jpg", good[: len(good) // 3]), ("00000001.txt", b"truncated"),   # truncated JPEG
        ("00000002.jpg", b"<html>not found</html>"),                                  # not an image
        ("00000003.png", img_bytes(1, "PNG")),                                         # fine, no caption
        ("00000004.txt", b"caption without image"),                                   # no image at all
        ("00000005.webp", bytes(range(256))),                                          # garbage
        ("00000006.jpg", good), ("00000006.txt", "légende".encode())])
    make_shard(tmp_path / "00001.tar", [("a/00000007.jpg", good), ("a/00000008.jpg", good), ("a/00000009.jpg", good)])
    with tarfile.open(tmp_path / "00001.tar") as tf: cut = tf.getmember("a/00000009.jpg").offset_data + 50
    (tmp_path / "00001.tar").write_bytes((tmp_path / "00001.tar").read_bytes()[:cut])  # shard cut short
    (tmp_path / "00002.tar").write_bytes(b"this is not a tar file at all" * 40)
    logs = []
    ds = TarShardDataset(tmp_path, size=24, log=logs.append)
    got = list(ds)
    assert [c for _, c in got] == ["first caption", "", "légende", "", ""]
    assert all(x.shape == (3, 24, 24) and x.dtype == torch.float32 for x, _ in got)
    assert ds.last_report.ok == 5
    assert ds.last_report.skipped == {"undecodable image(s)": 3, "sample(s) without an image": 1, "truncated or corrupt shard(s)": 2}
    assert len(logs) == 1 and "5 samples read, 6 skipped" in logs[0] and "00000001.jpg" in logs[0]
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2))  # workers split the shards
    assert sum(len(b[1]) for b in batches) == 5

def test_tar_reader_shard_specs(tmp_path):
    make_shard(tmp_path / "00000.tar", [("0.jpg", img_bytes(0))]); make_shard(tmp_path / "00001.tar", [("1.jpg", img_bytes(1))])
    assert len(list(TarShardDataset(str(tmp_path / "{00000..00001}.tar"), 16, log=lambda *_: None))) == 2
    assert len(list(TarShardDataset(str(tmp_path / "*.tar"), 16, log=lambda *_: None))) == 2
    with pytest.raises(FileNotFoundError, match="missing shard"): TarShardDataset(str(tmp_path / "{00000..00003}.tar"))
    with pytest.raises(FileNotFoundError, match="no shards match"): TarShardDataset(str(tmp_path / "x*.tar"))

def test_folder_reader(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "a.jpg").write_bytes(img_bytes(0)); (tmp_path / "a.txt").write_text("cap a\n")
    (tmp_path / "s" / "b.png").write_bytes(img_bytes(1, "PNG", 100, 30)); (tmp_path / "c.jpg").write_bytes(img_bytes(2)[:200])
    (tmp_path / "d.jpeg").write_bytes(b""); (tmp_path / "e.txt").write_text("orphan caption"); (tmp_path / ".DS_Store").write_bytes(b"\0")
    logs = []
    ds = ImageFolderDataset(tmp_path, size=20, log=logs.append)
    got = list(ds)
    assert [c for _, c in got] == ["cap a", ""] and got[1][0].shape == (3, 20, 20)
    assert ds.last_report.skipped == {"unreadable file(s)": 2} and "c.jpg" in logs[0]
    x = got[1][0]  # a tall 100x30 image: centre-cropped, not squashed
    assert x.shape == (3, 20, 20)

def test_render_differs_for_every_attribute(test_split):
    imgs, labels = test_split
    spec = sample_spec(scene_rng(0, 0, 1), labels)
    base = render(spec, imgs)
    from dcr_nb.data import N_VALUES
    for a in ATTRIBUTES[2:]:
        v = getattr(spec, a)
        other = (v % 3) + 1 if a == "count" else (v + 1) % N_VALUES[a] if a != "text" else (v % (N_VALUES[a] - 1)) + 1
        assert not np.array_equal(render(dataclasses.replace(spec, **{a: other}), imgs), base), a
