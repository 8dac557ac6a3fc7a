"""Seconds per training step of the default UNet (configs/mnist.yaml's model, batch 64) at a given
number of torch threads: shows how much intra-op threads cost when the cores are shared.

    python benchmarks/bench_threads.py 1 && python benchmarks/bench_threads.py 2
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_hub import UNet

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_UNET  # noqa: E402

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
torch.set_num_threads(threads)
model = UNet(**DEFAULT_UNET)
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
x, t = torch.randn(64, 1, 28, 28), torch.randint(0, 512, (64,))
for i in range(13):
    if i == 3:  # three warm-up steps
        start = time.perf_counter()
    loss = F.mse_loss(model(x, t).sample, x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
elapsed = (time.perf_counter() - start) / 10
print(f"{threads} thread(s): {elapsed:.2f} s/step, {64 / elapsed:.0f} images/s")
