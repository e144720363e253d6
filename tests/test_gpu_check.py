"benchmarks/gpu_check.py: its --tiny run exercises every setting, the projection and the pick; without CUDA the real run refuses clearly."
import json, math, subprocess, sys
from pathlib import Path
import pytest
import torch

ROOT, ROOT_SCRIPT = Path(__file__).resolve().parents[1], "benchmarks/gpu_check.py"
GRID = ["straightforward", "ours:c16", "ours:c16+ckpt", "ours:c64", "ours:c64+ckpt", "ours:all", "ours:all+ckpt"]


def _run(root, *args, timeout=120):
    return subprocess.run([sys.executable, ROOT_SCRIPT, *args], cwd=root, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    r = _run(ROOT, "--tiny", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text()), r.stdout


def test_tiny_measures_every_setting(tiny):
    res, _ = tiny
    rows = res["rows"]
    for stage in (1, 2):
        got = {r["setting"]: r for r in rows if r["stage"] == stage and not r["compile"]}
        assert sorted(got) == sorted(GRID), (stage, sorted(got))
        for name, r in got.items():
            assert r["status"] == "ok", r
            assert all(math.isfinite(t) and t > 0 for t in r["step_ms_all"]) and r["step_ms"] > 0 and r["peak_gb"] > 0, r
            assert r["images_per_s"] == pytest.approx(res["meta"]["batch_per_gpu"] / (r["step_ms"] / 1e3))
        assert got["ours:c16+ckpt"]["checkpoint"] and got["ours:c16+ckpt"]["chunk_size"] == 16 and not got["straightforward"]["fast"]
        assert len({r["trainable"] for r in got.values()}) == 1  # the stage, not the setting, decides what trains
        comp = [r for r in rows if r["stage"] == stage and r["compile"]]  # compile is skipped on the CPU, with the reason recorded
        assert len(comp) == 1 and comp[0]["status"] == "skipped" and "CPU" in comp[0]["reason"]
    trains = {st: next(r["trainable"] for r in rows if r["stage"] == st and r["status"] == "ok") for st in (1, 2)}
    assert trains[1] > 0 and trains[2] > 0 and trains[1] != trains[2]  # the projector, then the LoRA adapters


def test_tiny_projects_and_picks(tiny):
    res, stdout = tiny
    p = res["picks"]["tiny"]
    rows = {(r["stage"], r["setting"]): r for r in res["rows"] if r["status"] == "ok"}
    assert p["setting"] in GRID and set(p["dcr"]) == {"chunk_size", "checkpoint", "fast"}
    for st in (1, 2):  # the projection: recipe steps x grad accumulation x the measured step time
        steps = res["meta"]["recipe"][f"stage{st}_steps"] * res["meta"]["recipe"]["grad_accum"]
        assert p["hours"][f"stage{st}"] == pytest.approx(steps * rows[(st, p["setting"])]["step_ms"] / 1e3 / 3600)
        best = min((r for (s, _), r in rows.items() if s == st and not r["compile"]), key=lambda r: r["step_ms"])
        assert p["stage_picks"][f"stage{st}"]["setting"] == best["setting"]  # everything fits at tiny size
    assert p["total_hours"] == pytest.approx(sum(p["hours"].values())) and p["total_hours"] > 0
    assert p["paper"]["hours"] == 7.7 and "perfect data-parallel scaling" in res["meta"]["assumption"]
    assert "dcr:\n  chunk_size:" in stdout and "| tiny (32 px) | 1 | straightforward |" in stdout


def test_oom_and_a_hung_compile_are_rows_not_crashes(root, tmp_path):
    "A setting that runs out of memory is an OOM row; the compile run (a child process) is killed at its time limit: a timeout row."
    out = tmp_path / "o.json"
    r = _run(root, "--tiny", "--stages", "1", "--settings", "straightforward,ours:c16+ckpt", "--fake-oom", "straightforward",
             "--compile-on-cpu", "--compile-timeout", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    st = {x["setting"]: x for x in res["rows"]}
    assert st["straightforward"]["status"] == "oom" and st["ours:c16+ckpt"]["status"] == "ok"
    assert st["ours:c16+ckpt+compile"]["status"] == "timeout" and res["meta"]["complete"]
    assert res["picks"]["tiny"]["dcr"] == {"chunk_size": 16, "checkpoint": True, "fast": True}
    assert "| straightforward | OOM |" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_the_real_run_exits_2(root, tmp_path):
    r = _run(root, "--out", str(tmp_path / "x.json"), timeout=60)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr and "--tiny" in r.stderr
    assert not (tmp_path / "x.json").exists()
