"""The data fetch: verified files are kept, corrupted ones are named and rejected, never overwritten."""
import gzip
import pytest
from conftest import run_py
from dcr_nb.fetch import FASHION_MD5, DataError, fetch_fashion_mnist, fashion_dir, read_idx
from dcr_nb.core import file_md5 as md5

def test_canonical_files_present_and_verified():
    d = fetch_fashion_mnist(install=False)
    for name, want in FASHION_MD5.items(): assert md5(d / name) == want

def test_corrupted_file_in_place_is_rejected_by_name(tmp_path):
    for name in FASHION_MD5: (tmp_path / name).write_bytes((fashion_dir() / name).read_bytes())
    p = tmp_path / "train-labels-idx1-ubyte"; b = bytearray(p.read_bytes()); b[-1] ^= 0xFF; p.write_bytes(bytes(b))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is corrupted"): fetch_fashion_mnist(tmp_path, sources=[])
    assert p.read_bytes() == bytes(b)  # left as it was for the user to inspect

def test_truncated_file_is_rejected(tmp_path):
    for name in FASHION_MD5: (tmp_path / name).write_bytes((fashion_dir() / name).read_bytes())
    p = tmp_path / "t10k-images-idx3-ubyte"; p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is corrupted"): fetch_fashion_mnist(tmp_path, sources=[])
    with pytest.raises(DataError, match="truncated"): read_idx(p)

def test_missing_file_restored_from_a_gzip_source(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"; src.mkdir()
    for name in FASHION_MD5: (src / (name + ".gz")).write_bytes(gzip.compress((fashion_dir() / name).read_bytes(), compresslevel=1))
    fetch_fashion_mnist(dst, sources=[src])
    assert all(md5(dst / n) == h for n, h in FASHION_MD5.items())

def test_wrong_source_is_not_written(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"; src.mkdir()
    for name in FASHION_MD5: (src / (name + ".gz")).write_bytes(gzip.compress(b"MNIST, not Fashion-MNIST"))
    with pytest.raises(DataError, match="corrupted source; not written"): fetch_fashion_mnist(dst, sources=[src])
    assert list(dst.iterdir()) == []

def test_unavailable_source_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="Install the Debian package dataset-fashion-mnist"):
        fetch_fashion_mnist(tmp_path / "dst", sources=[tmp_path])

def test_cli_exits_1_naming_the_bad_file(root, fake_checkout):
    d = fake_checkout / "data" / "fashion-mnist"; d.mkdir(parents=True)
    (d / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    r = run_py("from dcr_nb.fetch import main; main()", cwd=root, env_extra={"DCR_NB_ROOT": str(fake_checkout)})
    assert r.returncode == 1 and "t10k-labels-idx1-ubyte is corrupted" in r.stderr
