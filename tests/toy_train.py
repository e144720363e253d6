"""A deterministic tiny training run for the resume test: python toy_train.py OUT RESULT [SLEEP_S]."""
import sys, time
import torch
from torch import nn
from dcr_nb.train import TrainConfig, batch_indices, train

class Toy(nn.Module):
    def __init__(self, sleep: float):
        super().__init__(); self.lin = nn.Linear(4, 2); self.drop = nn.Dropout(0.2); self.sleep = sleep
    def forward(self, batch):
        x, y = batch; time.sleep(self.sleep)
        loss = (self.drop(self.lin(x + 0.01 * torch.randn_like(x))) - y).square().mean()
        return {"loss": loss}

if __name__ == "__main__":
    out, result, sleep = sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g); Y = X @ torch.randn(4, 2, generator=g)
    get = lambda k, r, w: (X[batch_indices(64, 8, 0, k, r, w)], Y[batch_indices(64, 8, 0, k, r, w)])
    torch.manual_seed(123); task = Toy(sleep)
    train(task, get, TrainConfig(steps=40, batch_size=8, lr=0.05, warmup_steps=3, ckpt_every=5, grad_accum=2), out)
    torch.save({k: v.detach() for k, v in task.state_dict().items()}, result)
