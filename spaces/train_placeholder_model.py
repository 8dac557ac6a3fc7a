"""Train the PLACEHOLDER default model of the Space (spaces/default-model/), for development only.

The Space's bundled model is meant to come from the project's default training config
(``ddpm-hub train --config configs/mnist.yaml``). Until that checkpoint exists, this script makes a small
stand-in so that the Space works out of the box: the seed's training loop (random t per image, x_t by
``scheduler.add_noise``, MSE on the noise, Adam lr 1e-3) on the built-in MNIST-5k, with a tiny UNet.
It writes the pipeline folder and a model card that says exactly this.

    python spaces/train_placeholder_model.py --steps 600 --batch-size 32 --out spaces/default-model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import load_dataset

import ddpm_hub
from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, UNet

MODEL_KWARGS = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(14,),
    dropout=0.0,
    norm_num_groups=8,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "default-model")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_file = Path(ddpm_hub.__file__).parent / "datasets" / "mnist5k.parquet"
    ds = load_dataset("parquet", data_files=str(data_file), split="train")
    images = np.stack([np.asarray(im.convert("L"), dtype=np.float32) for im in ds["image"]])
    x_all = torch.from_numpy(images / 127.5 - 1.0)[:, None]  # (5000, 1, 28, 28) in [-1, 1]

    unet = UNet(**MODEL_KWARGS)
    scheduler = DDPMHubScheduler()  # T=512, linear, T-scaled range
    ema = torch.optim.swa_utils.AveragedModel(
        unet, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.995)
    )
    opt = torch.optim.Adam(unet.parameters(), lr=args.lr)
    T = scheduler.config.num_train_timesteps
    start = time.time()
    for step in range(1, args.steps + 1):
        batch = x_all[torch.randint(0, len(x_all), (args.batch_size,))]
        t = torch.randint(0, T, (args.batch_size,))
        noise = torch.randn_like(batch)
        x_noisy = scheduler.add_noise(batch, noise, t)
        loss = F.mse_loss(unet(x_noisy, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(unet)
        if step % 25 == 0 or step == args.steps:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    wall = time.time() - start

    pipe = DDPMHubPipeline(unet=ema.module, scheduler=scheduler)
    pipe.save_pretrained(args.out, safe_serialization=True)
    n_params = sum(p.numel() for p in unet.parameters())
    info = dict(
        steps=args.steps,
        threads=args.threads,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        num_parameters=n_params,
        wall_time_s=round(wall, 1),
        final_loss=round(loss.item(), 4),
        model=MODEL_KWARGS,
        torch=torch.__version__,
        ddpm_hub=ddpm_hub.__version__,
    )
    (args.out / "README.md").write_text(CARD.format(**info, info_json=json.dumps(info, indent=2)))
    print(f"wrote {args.out} ({n_params} parameters, {wall:.0f}s)")


CARD = """---
license: apache-2.0
library_name: diffusers
tags:
- ddpm-hub
- unconditional-image-generation
- placeholder
datasets:
- mnist
---

# ddpm-hub Space default model (PLACEHOLDER)

This is a **development placeholder**, not the project's default-config model. It was made by
`python spaces/train_placeholder_model.py --steps {steps} --batch-size {batch_size} --threads {threads}` in the ddpm-hub
repository, so that the Space works out of the box before the real checkpoint (trained by
`ddpm-hub train --config configs/mnist.yaml`) replaces it.

Exactly how it was trained:

- data: the built-in MNIST-5k (`ddpm_hub/datasets/mnist5k.parquet`, 5000 digits, 28x28 grayscale) scaled to [-1, 1];
  no augmentation;
- model: `ddpm_hub.UNet` with {model} ({num_parameters} parameters);
- scheduler: `DDPMHubScheduler()` defaults: T=512, linear betas over the T-scaled range
  (1e-4*1000/512 .. 0.02*1000/512), epsilon prediction;
- loop: the seed's training loop: a batch of {batch_size} images drawn with replacement, t ~ U{{0..511}} per image,
  x_t = `scheduler.add_noise(x_0, noise, t)`, MSE between the predicted and the true noise, Adam lr={learning_rate},
  {steps} steps, float32, torch seed {seed};
- weights: an EMA of the weights (decay 0.995, `torch.optim.swa_utils`), saved as safetensors;
- hardware: CPU, {wall_time_s} s wall time; final training loss {final_loss}.

Its samples are rough digits: it saw about {steps} x {batch_size} noisy images.

```json
{info_json}
```
"""

if __name__ == "__main__":
    main()
