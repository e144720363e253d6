"""The paper inputs fetcher (`make paper-inputs`, dcr_nb.paper_fetch, nbs/09b_paper_fetch.ipynb) against local stand-ins:
a `LocalHub` on 127.0.0.1 serving the Hugging Face hub endpoints huggingface_hub uses (tiny CLIP weights, a tiny SD 2.1-base
folder, a tiny MMVP-VLM dataset) and a CIFAR-style tarball; an interrupted download resumes; the fetched layout passes the
preflight; CC3M's TSV gets its header, and img2dataset's shards are staged and resumed (a stand-in command, and the real one
when it is installed)."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import yaml
import dcr_nb.paper_fetch as pf
from dcr_nb.fetch import DataError
from dcr_nb.paper import prediction_type_mismatch
from dcr_nb.paper_inputs import SD_MIRROR, Missing, PaperInputs, preflight
from dcr_nb.paper_fetch import (MMVP_REPO, LocalHub, Sources, cc3m_tsv_with_header, download, fetch_cc3m, fetch_inputs,
                                find_img2dataset, img2dataset_command, write_cifar_tarball)
from dcr_nb.fixtures import write_mmvp_folder, write_shards, write_tiny_sd
from dcr_nb.readers import TarShardDataset

ROOT = Path(__file__).resolve().parents[1]
quiet = lambda s: None


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    "A LocalHub with the default backbone's weights, SD 2.1-base (tiny, epsilon, with a real repository's extra files), MMVP-VLM and a CIFAR-style tarball."
    src = tmp_path_factory.mktemp("sources")
    with LocalHub() as h:
        h.add_repo("timm/vit_large_patch14_clip_224.openai", {"open_clip_model.safetensors": b"weights " * 1000})
        h.add_folder(SD_MIRROR, write_tiny_sd(src / "sd", prediction_type="epsilon"))
        h.repos[("model", SD_MIRROR)].update({"v2-1_512-ema-pruned.ckpt": b"one-file checkpoint", "README.md": b"# SD 2.1-base",
                                              "unet/diffusion_pytorch_model.fp16.safetensors": b"half", "unet/diffusion_pytorch_model.bin": b"old"})
        h.add_folder(MMVP_REPO, write_mmvp_folder(src / "mmvp"), kind="dataset")
        h.repos[("dataset", MMVP_REPO)][".gitattributes"] = b"*.jpg filter=lfs"
        md5 = write_cifar_tarball(src / "cifar.tgz")
        h.sources = Sources(h.url, cifar_url=h.add_file("/cifar-10-python.tar.gz", (src / "cifar.tgz").read_bytes()), cifar_md5=md5, cifar_per_class=2)
        yield h


def layout(d: Path, shards: int = 2) -> PaperInputs:
    "The paper inputs under `d`, the CC3M shards already there (img2dataset is tested on its own below)."
    write_shards(d / "cc3m", n_shards=shards)
    return PaperInputs(model="openai-l14", pretrained="openai", cache_dir=str(d / "hf"), sd=str(d / "sd"), mmvp=str(d / "MMVP_VLM"),
                       shards=str(d / "cc3m" / f"{{00000..{shards - 1:05d}}}.tar"), d_ability=str(d / "cifar10-test"))


def downloads(h, since: int = 0) -> list[str]:
    "The paths whose bodies the hub sent after request number `since`."
    return [p for m, p, _ in h.log[since:] if m == "GET" and not p.startswith("/api/")]


def test_an_interrupted_download_resumes(hub, tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 1_000_000, dtype=np.uint8).tobytes()
    url, dest, md5 = hub.add_file("/big.bin", data), tmp_path / "big.bin", pf.hashlib.md5(data).hexdigest()
    hub.cuts["/big.bin"] = 300_000  # the connection drops after 300 kB; no retry left in this run
    with pytest.raises(DataError, match="the 300,000 bytes received are kept in .*big.bin.part: rerun to continue"):
        download(url, dest, md5=md5, retries=0, progress=False)
    assert not dest.exists() and (tmp_path / "big.bin.part").stat().st_size == 300_000
    n = len(hub.log)
    download(url, dest, md5=md5, progress=False)  # the rerun asks for the rest only
    assert [r for _, _, r in hub.log[n:]] == ["bytes=300000-"] and dest.read_bytes() == data and not (tmp_path / "big.bin.part").exists()
    (tmp_path / "other.bin.part").write_bytes(b"\0" * 2_000_000)  # longer than the file: not a prefix of it, started over
    download(url, tmp_path / "other.bin", size=len(data), md5=md5, progress=False)
    assert (tmp_path / "other.bin").read_bytes() == data
    with pytest.raises(DataError, match="the download has md5 .*; it was deleted: rerun"):
        download(url, tmp_path / "bad.bin", md5="0" * 32, progress=False)
    with pytest.raises(DataError, match="is already there but has 1,000,000 bytes, expected 5: delete it"):
        download(url, dest, size=5, progress=False)
    import socket
    with socket.socket() as sock: sock.bind(("127.0.0.1", 0)); closed = f"http://127.0.0.1:{sock.getsockname()[1]}/x.bin"  # nothing listens there
    with pytest.raises(DataError, match="could not download .*x.bin .*is this machine online"): download(closed, tmp_path / "x.bin", retries=0, progress=False)
    with pytest.raises(DataError, match="HTTP 404"): download(hub.url + "/missing.bin", tmp_path / "m.bin", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin", "other.bin"]


def test_every_input_fetched_passes_the_preflight_and_a_rerun_downloads_nothing(hub, tmp_path):
    inputs = layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="4 input"): preflight(**inputs.to_dict())
    n = len(hub.log)
    hub.cuts[f"/{SD_MIRROR}/resolve/{pf.hub_manifest(SD_MIRROR, endpoint=hub.url)[0]}/unet/diffusion_pytorch_model.safetensors"] = 1000
    res = fetch_inputs(inputs, sources=hub.sources, progress=False, log=quiet)
    assert list(res) == ["clip openai-l14", "sd", "mmvp", "cifar10", "cc3m"] and all(isinstance(r, str) for r in res.values()), res
    assert any(r == "bytes=1000-" for _, _, r in hub.log[n:])  # the dropped UNet download resumed within the run
    s = preflight(**inputs.to_dict())
    assert s["mmvp"] == "9 pairs" and s["d_ability"] == "10 classes" and "epsilon" in s["sd"]
    assert prediction_type_mismatch({"dcr": {"fidelity": "reference"}, "inputs": {"sd": inputs.sd}}) == ""
    sd = Path(inputs.sd)
    assert (sd / "unet/diffusion_pytorch_model.safetensors").is_file() and not (sd / "unet/diffusion_pytorch_model.bin").exists()
    assert not any((sd / n).exists() for n in ("v2-1_512-ema-pruned.ckpt", "README.md", "unet/diffusion_pytorch_model.fp16.safetensors"))
    assert not any(p.name.endswith((".partial", ".part")) for p in tmp_path.rglob("*"))
    n = len(hub.log)
    again = fetch_inputs(inputs, sources=hub.sources, progress=False, log=quiet)
    assert downloads(hub, n) == [] and all("kept" in r for r in again.values()), again
    two = fetch_inputs([inputs, pf.dataclasses.replace(inputs, model="openai-l14-336")], ["clip"], sources=hub.sources, progress=False, log=quiet)
    assert "kept" in two["clip openai-l14"] and "the Hugging Face hub has none of timm/vit_large_patch14_clip_336.openai" in two["clip openai-l14-336"].how


def test_a_file_in_place_is_checked_never_overwritten_and_a_missing_one_is_fetched(hub, tmp_path):
    inputs = layout(tmp_path)
    fetch_inputs(inputs, ["sd", "cifar10"], sources=hub.sources, progress=False, log=quiet)
    cfg = Path(inputs.sd) / "vae" / "config.json"; cfg.write_text("{}")
    r = fetch_inputs(inputs, ["sd"], sources=hub.sources, progress=False, log=quiet)["sd"]
    assert isinstance(r, Missing) and r.path == inputs.sd and f"{cfg} is not {SD_MIRROR}'s vae/config.json" in r.how and cfg.read_text() == "{}"
    cfg.unlink(); (Path(inputs.sd) / "tokenizer" / "vocab.json").unlink()
    n = len(hub.log)
    assert "2 fetched" in fetch_inputs(inputs, ["sd"], sources=hub.sources, progress=False, log=quiet)["sd"]
    assert sorted(p.rsplit("/", 2)[-2] for p in downloads(hub, n)) == ["tokenizer", "vae"]
    preflight(sd=inputs.sd)
    kept = fetch_inputs(inputs, ["cifar10"], sources=Sources(hub.url, cifar_url=hub.sources.cifar_url, cifar_md5="0" * 32, cifar_per_class=2),
                        progress=False, log=quiet)["cifar10"]
    assert kept == "kept: 10 classes x 2 images"  # a complete folder is kept: nothing is downloaded
    other = PaperInputs(d_ability=str(tmp_path / "fresh"))
    r = fetch_inputs(other, ["cifar10"], sources=Sources(hub.url, cifar_url=hub.sources.cifar_url, cifar_md5="0" * 32, cifar_per_class=2),
                     progress=False, log=quiet)["cifar10"]
    assert isinstance(r, Missing) and "the download has md5" in r.how and not (tmp_path / "fresh").exists()


def test_the_command_line_fetches_then_runs_the_preflight(hub, tmp_path, capsys):
    inputs = layout(tmp_path)
    fetch_inputs(inputs, ["clip", "cifar10"], sources=hub.sources, progress=False, log=quiet)
    rel = {k: os.path.relpath(v, ROOT) if k in ("sd", "mmvp") else v for k, v in inputs.to_dict().items() if k not in ("model", "pretrained")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"backbones": {"openai-l14": {"pretrained": "openai"}}, "inputs": rel}))  # sd, mmvp: relative (paper/dvc.yaml)
    env = {**os.environ, "DCR_NB_ROOT": str(ROOT), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-m", "dcr_nb.paper_fetch", str(tmp_path / "params.yaml"), "--only", "sd,mmvp"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{SD_MIRROR}@" in r.stdout and "9 pairs" in r.stdout and "paper inputs ok:" in r.stdout, r.stdout
    assert pf.main([str(tmp_path / "params.yaml"), "--only", "cc3m", "--cc3m-limit", "5"]) == 1  # no TSV: said, and the preflight still runs
    out = capsys.readouterr()
    assert "1 input(s) not fetched:\n- CC3M webdataset shards: " in out.err and "needs a Google sign-in" in out.err and "paper inputs ok:" in out.out
    with pytest.raises(SystemExit) as e: pf.main([str(tmp_path / "params.yaml"), "--only", "sd,weights"])
    assert e.value.code == 2


def test_cc3m_tsv_header_command_and_messages(tmp_path, monkeypatch, capsys):
    (tmp_path / "gcc.tsv").write_text('a dog\thttp://x/1.jpg\na cat\thttps://x/2.jpg\r\n"the gift" by person\thttp://x/3.jpg\n')
    assert cc3m_tsv_with_header(tmp_path / "gcc.tsv", tmp_path / "h.tsv") == 3
    assert (tmp_path / "h.tsv").read_text().splitlines() == ["caption\turl", "a dog\thttp://x/1.jpg", "a cat\thttps://x/2.jpg", '"""the gift"" by person"\thttp://x/3.jpg']
    assert cc3m_tsv_with_header(tmp_path / "h.tsv", tmp_path / "h2.tsv", limit=2) == 2 and (tmp_path / "h2.tsv").read_text().count("caption\turl") == 1
    (tmp_path / "bad.tsv").write_text("a dog\thttp://x/1.jpg\nno url here\n")
    with pytest.raises(DataError, match=r"bad.tsv, line 2: expected a caption, a tab and an image URL"): cc3m_tsv_with_header(tmp_path / "bad.tsv", tmp_path / "o.tsv")
    assert not (tmp_path / "o.tsv").exists() and not list(tmp_path.glob(".o.tsv*"))
    cmd = img2dataset_command("img2dataset", "in.tsv", "out")
    for flag in ("--url_list=in.tsv", "--input_format=tsv", "--url_col=url", "--caption_col=caption", "--output_format=webdataset",
                 "--output_folder=out", "--number_sample_per_shard=10000", "--incremental_mode=incremental"): assert flag in cmd
    spec = str(tmp_path / "cc3m" / "{00000..00331}.tar")
    with pytest.raises(DataError, match="needs a Google sign-in.*CC3M_TSV="): fetch_cc3m(spec)
    monkeypatch.setenv("IMG2DATASET", str(tmp_path / "nothing")); monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match="not a file. img2dataset is not installed. It requires pandas < 3"): fetch_cc3m(spec, tmp_path / "gcc.tsv")
    monkeypatch.delenv("IMG2DATASET")
    if not (ROOT / ".venv-img2dataset" / "bin" / "img2dataset").is_file():
        with pytest.raises(DataError, match=r"python3 -m venv .venv-img2dataset && .venv-img2dataset/bin/pip install img2dataset==1.47.0"): find_img2dataset()
    with pytest.raises(DataError, match="must name img2dataset's shards of one folder"): fetch_cc3m(str(tmp_path / "cc3m" / "part-{0..3}.tar"), tmp_path / "gcc.tsv")


STANDIN = """#!{python}
# A stand-in of img2dataset's command: webdataset shards of one small JPEG per row and a `_stats.json` once a shard is done;
# shards with stats are skipped (its incremental mode); each shard made is logged to $STANDIN_LOG; $STANDIN_STOP=k: shard k is
# left half written and the command fails.
import io, json, os, sys, tarfile
a = dict(x[2:].split("=", 1) for x in sys.argv[1:])
rows = open(a["url_list"]).read().splitlines()[1:]; per, out = int(a["number_sample_per_shard"]), a["output_folder"]
jpg = open(os.environ["STANDIN_JPEG"], "rb").read()
for s in range((len(rows) + per - 1) // per):
    if os.path.exists(f"{{out}}/{{s:05d}}_stats.json"): continue
    open(os.environ["STANDIN_LOG"], "a").write(f"{{s}}\\n")
    with tarfile.open(f"{{out}}/{{s:05d}}.tar", "w") as tf:
        for i, row in enumerate(rows[s * per:(s + 1) * per]):
            for ext, data in (("jpg", jpg), ("txt", row.split("\\t")[0].encode())):
                ti = tarfile.TarInfo(f"{{s:05d}}{{i:04d}}.{{ext}}"); ti.size = len(data); tf.addfile(ti, io.BytesIO(data))
            if os.environ.get("STANDIN_STOP") == str(s): sys.exit(1)
    n = len(rows[s * per:(s + 1) * per])
    json.dump({{"count": n, "successes": n}}, open(f"{{out}}/{{s:05d}}_stats.json", "w"))
"""


def test_cc3m_shards_are_staged_moved_when_complete_and_resumed(tmp_path, monkeypatch):
    from PIL import Image
    exe = tmp_path / "img2dataset"; exe.write_text(STANDIN.format(python=sys.executable)); exe.chmod(0o755)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "px.jpg"); calls = tmp_path / "calls.log"
    for k, v in {"IMG2DATASET": str(exe), "STANDIN_JPEG": str(tmp_path / "px.jpg"), "STANDIN_LOG": str(calls)}.items(): monkeypatch.setenv(k, v)
    def made() -> list[int]:
        "The shards the command made since the last call."
        out = [int(x) for x in calls.read_text().split()] if calls.exists() else []
        calls.unlink(missing_ok=True); return out
    monkeypatch.setattr(pf, "CC3M_SHARD", 2)  # 2 rows per shard: 5 rows make 3 shards
    (tmp_path / "gcc.tsv").write_text("".join(f"caption {i}\thttp://x/{i}.jpg\n" for i in range(5)))
    spec, folder, stage = str(tmp_path / "cc3m" / "{00000..00002}.tar"), tmp_path / "cc3m", tmp_path / "cc3m.partial"
    monkeypatch.setenv("STANDIN_STOP", "1")  # interrupted in shard 1
    with pytest.raises(DataError, match="exited with status 1: 1 of 3 shards are complete in .*rerun to continue"): fetch_cc3m(spec, tmp_path / "gcc.tsv", log=quiet)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.tar", "00000_stats.json"] and (stage / "00001.tar").is_file()  # the half shard stays staged
    with pytest.raises(FileNotFoundError, match="00001.tar"): preflight(shards=spec)
    monkeypatch.delenv("STANDIN_STOP")
    assert made() == [0, 1] and fetch_cc3m(spec, tmp_path / "gcc.tsv", log=quiet).startswith("3 shard(s) in ") and made() == [1, 2]
    assert not stage.exists() and sorted(p.name for p in folder.iterdir() if p.suffix == ".tar") == ["00000.tar", "00001.tar", "00002.tar"]
    preflight(shards=spec)
    assert sorted(c for _, c in TarShardDataset(spec, 8, log=quiet)) == [f"caption {i}" for i in range(5)]
    # a first try with a limit, then the whole list: the first try's short last shard is made again, its full one kept
    spec2, folder2 = str(tmp_path / "b" / "{00000..00002}.tar"), tmp_path / "b"
    r = fetch_cc3m(spec2, tmp_path / "gcc.tsv", limit=3, log=quiet)
    assert made() == [0, 1] and f"set inputs.shards: {folder2}/{{00000..00001}}.tar" in r, r
    assert fetch_cc3m(spec2, tmp_path / "gcc.tsv", log=quiet).startswith("3 shard(s)") and made() == [1, 2]
    assert [json.loads((folder2 / f"{i:05d}_stats.json").read_text())["count"] for i in range(3)] == [2, 2, 1]
    assert sorted(c for _, c in TarShardDataset(spec2, 8, log=quiet)) == [f"caption {i}" for i in range(5)]
    assert fetch_cc3m(spec2).startswith("kept: 3 shards")  # complete: no TSV needed, nothing runs


def _has_img2dataset() -> bool:
    try: return bool(find_img2dataset())
    except DataError: return False


@pytest.mark.skipif(not _has_img2dataset(), reason="img2dataset is not installed (it lives in an environment of its own: see IMG2DATASET_HOW)")
def test_real_img2dataset_on_a_local_server(tmp_path):
    from PIL import Image
    import io
    def jpeg(c):
        b = io.BytesIO(); Image.new("RGB", (60, 40), c).save(b, "JPEG"); return b.getvalue()
    with LocalHub() as h:
        urls = [h.add_file(f"/img/{i}.jpg", jpeg(c)) for i, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)])]
        caps = ["caption 0", '"the gift" by person', 'say "hi" twice']  # quotes survive img2dataset's CSV reader
        (tmp_path / "gcc.tsv").write_text("".join(f"{c}\t{u}\n" for c, u in zip(caps, urls)) + f"gone\t{h.url}/img/404.jpg\n")
        r = fetch_cc3m(str(tmp_path / "cc3m" / "{00000..00000}.tar"), tmp_path / "gcc.tsv", processes=1, threads=4, log=quiet)
    assert "3 of 4 images downloaded" in r, r
    preflight(shards=str(tmp_path / "cc3m" / "00000.tar"))
    assert sorted(c for _, c in TarShardDataset(str(tmp_path / "cc3m" / "00000.tar"), 16, log=quiet)) == sorted(caps)
