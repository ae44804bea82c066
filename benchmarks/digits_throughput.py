"""End-to-end sampling throughput on the built-in digits U-Net (``digits-ddpm``), against the network's own cost.

For each sampler (DDIM with 50 steps, DDPM ancestral with all 1000) and batch size (1 and 256) it times
``scoregen.sample`` as ``scoregen sample`` runs it (a fresh ``net.score_model()``, x0 clipped to [-1, 1], one batch)
and reports samples per second and milliseconds per step, next to

* the network's own forward time at that batch size (``net(x, t)`` on the same input under ``torch.no_grad``), and
* the sampler's own cost per step: the same ``sample()`` call on the same schedule, shape and hook with a network
  that returns zeros (level lookup, the clip hook, the update, the noise draw, sample()'s guard and copies),

so the sampler's share of a step is ``sampler / (sampler + forward)``. Times are medians over the repeats; on a
busy machine the end-to-end and forward medians can differ by more than the sampler's cost, which is why the
sampler's cost is measured on its own.

    python benchmarks/digits_throughput.py [--repeats 5] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

import scoregen as sg

CASES = [("ddim", {"steps": 50}, 50), ("ddpm", {}, 1000)]
BATCHES = (1, 256)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_ms(net, batch: int, device: torch.device, repeats: int) -> float:
    """Median milliseconds of one ``net(x, t)`` at this batch size (several calls per repeat at batch 1)."""
    x = torch.randn(batch, *net.shape, device=device)
    t = torch.full((batch,), 500.0, device=device)
    calls = 200 if batch == 1 else 20
    with torch.no_grad():
        for _ in range(5):
            net(x, t)
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                net(x, t)
            sync(device)
            times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def sample_run(net, sampler: str, options: dict, batch: int, device: torch.device, seed: int,
               zero: bool = False) -> tuple[float, int]:
    """(seconds, NFE) of one ``sample()`` of ``batch`` samples in one batch, with a fresh score model (of a network
    returning zeros with ``zero``: the sampler's own cost)."""
    if zero:
        model = sg.NetworkScoreModel(lambda x, t: torch.zeros_like(x), net.schedule, net.parameterization,
                                     shape=net.shape, time=net.score_model().time)
    else:
        model = net.score_model()
    sync(device)
    res = sg.sample(model, sampler, batch, seed=seed, batch_size=batch, x0_hook=sg.clip_x0(-1.0, 1.0), device=device,
                    progress=False, **options)
    sync(device)
    return res.wall_time, res.nfe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net, _ = sg.load_checkpoint("digits-ddpm", device=device)
    params = sum(p.numel() for p in net.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    print(f"{datetime.date.today()}, scoregen {sg.__version__}, torch {torch.__version__}, {where}, "
          f"{torch.get_num_threads()} thread(s); digits-ddpm ({type(net).__name__}, {params / 1e6:.2f}M parameters), "
          f"x0 clipped to [-1, 1]; medians of {args.repeats} runs (DDPM: {max(1, args.repeats // 2)})")
    print()
    print("| sampler | batch | NFE | samples/s | ms per step | network forward, ms | sampler alone, ms per step | "
          "sampler's share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    sample_run(net, "ddim", {"steps": 5}, 1, device, 0)  # warm-up: imports, allocator
    for batch in BATCHES:
        forward = forward_ms(net, batch, device, args.repeats)
        for sampler, options, _ in CASES:
            repeats = args.repeats if sampler == "ddim" else max(1, args.repeats // 2)
            runs = [sample_run(net, sampler, options, batch, device, seed) for seed in range(repeats)]
            alone = [sample_run(net, sampler, options, batch, device, seed, zero=True) for seed in range(args.repeats)]
            wall = statistics.median(w for w, _ in runs)
            nfe = runs[0][1]
            own = statistics.median(w for w, _ in alone) / nfe * 1e3
            label = sampler + "".join(f" {k}={v}" for k, v in options.items())
            print(f"| {label} | {batch} | {nfe} | {batch / wall:.1f} | {wall / nfe * 1e3:.3f} | {forward:.3f} | {own:.3f} | "
                  f"{own / (own + forward):.1%} |", flush=True)


if __name__ == "__main__":
    main()
