"""The foundation: root resolution from anywhere, and typed configs that reject bad input clearly."""
import dataclasses, typing
import pytest
from conftest import run_py
from dcr_nb.core import ConfigError, StageConfig, atomic_write, seed_everything

@pytest.mark.parametrize("sub", [".", "nbs", "nbs/stages", "dcr_nb", "tests"])
def test_root_from_subfolder(root, sub):
    r = run_py("from dcr_nb.core import repo_root; print(repo_root())", cwd=root / sub)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(root)

def test_root_env_override(root, fake_checkout, tmp_path):
    r = run_py("from dcr_nb.core import root_path; print(root_path('data'))", cwd=root, env_extra={"DCR_NB_ROOT": str(fake_checkout)})
    assert r.stdout.strip() == str(fake_checkout / "data")
    bad = tmp_path / "not-a-checkout"; bad.mkdir()
    r = run_py("from dcr_nb.core import repo_root; repo_root()", cwd=root, env_extra={"DCR_NB_ROOT": str(bad)})
    assert r.returncode != 0 and "is not a dcr-nb checkout" in r.stderr

@dataclasses.dataclass(frozen=True)
class Cfg(StageConfig):
    steps: int = 10
    lr: float = 1e-3
    objective: typing.Literal["recon", "naive", "dcr"] = "dcr"
    name: str = "x"
    amp: bool = False

@pytest.mark.parametrize("bad, msg", [
    (dict(stpes=3), "unknown parameter(s) 'stpes' (did you mean 'steps'?)"),
    (dict(zzz=1), "unknown parameter(s) 'zzz'; known: steps, lr, objective, name, amp"),
    (dict(steps="10"), "Cfg.steps must be int, got str '10'"),
    (dict(steps=1.5), "Cfg.steps must be int, got float 1.5"),
    (dict(lr="fast"), "Cfg.lr must be float, got str 'fast'"),
    (dict(amp=1), "Cfg.amp must be bool, got int 1"),
    (dict(objective="contrastive"), "Cfg.objective must be one of 'recon', 'naive', 'dcr'"),
    (dict(name=None), "Cfg.name must be str, got NoneType None"),
])
def test_config_rejects_bad_input(bad, msg):
    with pytest.raises(ConfigError) as e: Cfg.from_dict(bad)
    assert msg in str(e.value)

def test_config_accepts_good_input():
    c = Cfg.from_dict(dict(steps=5, lr=1, objective="naive", amp=True))
    assert (c.steps, c.lr, c.objective, c.amp) == (5, 1.0, "naive", True) and isinstance(c.lr, float)

def test_missing_required():
    @dataclasses.dataclass(frozen=True)
    class Req(StageConfig):
        path: str
    with pytest.raises(ConfigError, match="missing parameter"): Req.from_dict({})

def test_seed_and_atomic_write(tmp_path):
    import torch
    seed_everything(7); a = torch.rand(3); seed_everything(7)
    assert torch.equal(a, torch.rand(3))
    p = atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01" and [q.name for q in p.parent.iterdir()] == ["b.bin"]
