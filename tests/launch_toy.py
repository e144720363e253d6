"""A tiny training run for tests/test_launch.py, started by `python -m dcr_nb.launch PARAMS -- tests/launch_toy.py OUT RESULT [SLEEP_S]`
(or, from a stage notebook, `run(...)`): every process writes who it is (rank, world size, machine rank) to OUT/rank<r>.json and the
main process saves the final weights to RESULT. SLEEP_S seconds per forward leave time to stop it mid-run."""
import json, os, sys, time
from pathlib import Path
import torch
from torch import nn
from dcr_nb.train import TrainConfig, batch_indices, train

STEPS = 30
CFG = TrainConfig(steps=STEPS, batch_size=4, lr=0.05, warmup_steps=3, ckpt_every=5)

class Toy(nn.Module):
    def __init__(self, sleep: float):
        super().__init__(); self.lin = nn.Linear(4, 2); self.drop = nn.Dropout(0.2); self.sleep = sleep
    def forward(self, batch):
        x, y = batch; time.sleep(self.sleep)
        return {"loss": (self.drop(self.lin(x + 0.01 * torch.randn_like(x))) - y).square().mean()}

def run(out, result, sleep: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g); Y = X @ torch.randn(4, 2, generator=g)
    get = lambda k, r, w: (X[batch_indices(64, CFG.batch_size, 0, k, r, w)], Y[batch_indices(64, CFG.batch_size, 0, k, r, w)])
    torch.manual_seed(123); task = Toy(sleep)
    summary = train(task, get, CFG, out)
    from accelerate import PartialState
    s = PartialState()
    Path(out, f"rank{s.process_index}.json").write_text(json.dumps(
        {"rank": s.process_index, "world": s.num_processes, "machine": int(os.environ.get("GROUP_RANK", "0")), "pid": os.getpid()}))
    if s.is_main_process: torch.save({k: v.detach().clone() for k, v in task.state_dict().items()}, result)
    return summary

if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
