"""Per-step sampler overhead: every sampler on a model whose network returns zeros (D = 64).

What is left is the sampler's own cost per step: level lookup, coefficient arithmetic, the update
and (for stochastic samplers) the noise draw. Prints a table of median microseconds per step at
batch 1 and batch 8192, next to the cost of one ``torch.randn`` of the batch (the floor of any
sampler that injects fresh noise each step). Each cell is "median / best" over the repeats: on CPU,
glibc's allocator occasionally returns the network's 2 MB output buffers to the OS and page-faults
them back, which makes single runs spiky (setting MALLOC_MMAP_THRESHOLD_=67108864 removes that).

    python benchmarks/sampler_overhead.py [--repeats 15] [--device cpu|cuda] [--baseline OTHER/scoregen] [--peers]

``--baseline`` compares with another scoregen source tree (e.g. a ``git worktree`` of an older commit) in the
same process, the two alternating run by run, so that both see the same machine load: the table then shows
both and their difference.

``--peers`` also times the other libraries' equivalents on the same model (:mod:`scoregen.bench.peers`):
diffusers' DDPM and DDIM scheduler steps in a pipeline's loop, and k-diffusion's euler, euler_ancestral and
dpmpp_2m on ``DiscreteEpsDDPMDenoiser``'s own grid, through scoregen's cached wrapper and through the stock one.
Each peer alternates run by run with the scoregen sampler it is compared with (DDPM and k-diffusion's ancestral
sampler with scoregen's ddpm; DDIM, euler and dpmpp_2m with ddim eta=0), at the same steps, and the table gives
the ratio of the medians. The stock k-diffusion wrapper at batch 8192 runs 20 steps (each costs a quarter of a
second) and at most 5 repeats. A last table times the sigma -> t lookup alone, stock and cached.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time

import torch

import scoregen as sg

D = 64
CASES = [  # (label, sampler, options at batch 1, options at batch 8192)
    ("ddpm", "ddpm", {}, {"steps": 100}),
    ("ddpm variance=beta", "ddpm", {"variance": "beta"}, {"steps": 100, "variance": "beta"}),
    ("ddim eta=0", "ddim", {"steps": 1000}, {"steps": 100}),
    ("ddim eta=1", "ddim", {"steps": 1000, "eta": 1.0}, {"steps": 100, "eta": 1.0}),
    ("langevin", "langevin", {"levels": 10, "steps_per_level": 100}, {"levels": 10, "steps_per_level": 10}),
] + [(name, name, {"steps": 200}, {"steps": 50}) for name in (  # the fast solvers (issue 10)
    "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm", "dpmpp_2m_sde", "euler_maruyama", "pc")] + [
    ("edm s_churn=10", "edm", {"steps": 200, "s_churn": 10.0}, {"steps": 50, "s_churn": 10.0}),
]


def zero_model(package=sg) -> sg.NetworkScoreModel:
    return package.NetworkScoreModel(lambda x, t: torch.zeros_like(x), package.DiscreteVP.linear(), shape=(D,))


def load_baseline(path: str):
    """Another scoregen source tree (the folder holding its ``__init__.py``), imported as ``scoregen_baseline``."""
    spec = importlib.util.spec_from_file_location("scoregen_baseline", os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    package = importlib.util.module_from_spec(spec)
    sys.modules["scoregen_baseline"] = package
    spec.loader.exec_module(package)
    return package


def per_step_us(runs, sampler: str, batch: int, options: dict, repeats: int, device: str) -> list[tuple[float, float]]:
    """(median, best) microseconds per step for each ``(package, model)`` in ``runs``, alternating run by run."""
    times = [[] for _ in runs]
    for package, model in runs:  # warm-up
        package.sample(model, sampler, batch, seed=0, progress=False, device=device, **options)
    for r in range(repeats):
        order = range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))
        for k in order:
            package, model = runs[k]
            if device == "cuda":
                torch.cuda.synchronize()
            res = package.sample(model, sampler, batch, seed=r, progress=False, device=device, **options)
            if device == "cuda":
                torch.cuda.synchronize()
            times[k].append(res.wall_time / res.nfe * 1e6)
    return [(statistics.median(t), min(t)) for t in times]


def randn_us(batch: int, repeats: int, device: str) -> float:
    g = torch.Generator(device).manual_seed(0)
    buf = torch.empty(batch, D, device=device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(20):
            buf.normal_(generator=g)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / 20 * 1e6)
    return statistics.median(times), min(times)


def bare_step_us(batch: int, repeats: int, device: str) -> tuple[float, float]:
    """The floor of any sampler step on the zero network, in plain torch: the network's input (the VE level rescaled
    to its VP label), its output, one finiteness check and Euler's update. Median / best microseconds."""
    x = torch.randn(batch, D, device=device)
    times = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(20):
            eps = torch.zeros_like(x * 0.3)
            float(eps.sum())
            x.add_(eps, alpha=-0.01)
        if r:  # the first round warms up
            times.append((time.perf_counter() - start) / 20 * 1e6)
    return statistics.median(times), min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--baseline", help="another scoregen source tree to compare with, run alternately in this process")
    p.add_argument("--only", nargs="+", help="only these scoregen cases (labels of the first table, e.g. dpmpp_2m heun) "
                                             "and the peers compared with them")
    p.add_argument("--peers", action="store_true",
                   help="also time diffusers' and k-diffusion's equivalents on the same model (needs them installed)")
    args = p.parse_args()
    if args.only:
        CASES[:] = [c for c in CASES if c[0] in args.only]
        PEER_CASES[:] = [c for c in PEER_CASES if c[2] in args.only]
    runs = [(sg, zero_model())]
    if args.baseline:
        baseline = load_baseline(args.baseline)
        runs.insert(0, (baseline, zero_model(baseline)))
    print(f"scoregen {sg.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}; microseconds per step, median / best of {args.repeats} runs"
          + (f"; baseline {args.baseline} then this tree, alternating" if args.baseline else ""))
    cell = lambda med, best, wide: f"{med:>{wide}.1f} / {best:>{wide - 2}.1f}" if wide < 7 else f"{med:>{wide}.0f} / {best:>{wide - 2}.0f}"  # noqa: E731
    if not args.baseline:
        print(f"| {'sampler':<20} | {'batch 1':>13} | {'batch 8192':>15} |")
        print(f"| {'-' * 20} | {'-' * 12}: | {'-' * 14}: |")
    else:
        print(f"| {'sampler':<20} | {'batch':>5} | {'baseline':>15} | {'this tree':>15} | {'difference (median)':>20} |")
        print(f"| {'-' * 20} | ----: | {'-' * 14}: | {'-' * 14}: | {'-' * 19}: |")
    for label, name, o1, o2 in CASES:
        small = per_step_us(runs, name, 1, o1, args.repeats, args.device)
        large = per_step_us(runs, name, 8192, o2, args.repeats, args.device)
        if not args.baseline:
            print(f"| {label:<20} | {cell(*small[0], 6)} | {cell(*large[0], 7)} |")
            continue
        for batch, ((b_med, b_best), (t_med, t_best)) in ((1, small), (8192, large)):
            wide = 6 if batch == 1 else 7
            print(f"| {label:<20} | {batch:>5} | {cell(b_med, b_best, wide):>15} | {cell(t_med, t_best, wide):>15} | "
                  f"{t_med - b_med:>+10.1f} ({(t_med / b_med - 1) * 100:+.0f}%) |")
    if not args.baseline:
        (s_med, s_min), (b_med, b_min) = randn_us(1, args.repeats, args.device), randn_us(8192, args.repeats, args.device)
        print(f"| {'(one randn draw)':<20} | {s_med:>6.1f} / {s_min:>4.1f} | {b_med:>7.0f} / {b_min:>5.0f} |")
        (s_med, s_min), (b_med, b_min) = bare_step_us(1, args.repeats, args.device), bare_step_us(8192, args.repeats, args.device)
        print(f"| {'(bare Euler step)':<20} | {s_med:>6.1f} / {s_min:>4.1f} | {b_med:>7.0f} / {b_min:>5.0f} |")
    if args.peers:
        peer_tables(args.repeats, args.device)


# ----------------------------------------------------------------------------- --peers

PEER_CASES = [  # (peer label, cached k-diffusion wrapper, the scoregen case it is compared with)
    ("diffusers:DDPM", True, "ddpm"),
    ("diffusers:DDIM", True, "ddim eta=0"),
    ("k-diffusion:euler", True, "ddim eta=0"),
    ("k-diffusion:euler", False, "ddim eta=0"),
    ("k-diffusion:euler_ancestral", True, "ddpm"),
    ("k-diffusion:euler_ancestral", False, "ddpm"),
    ("k-diffusion:dpmpp_2m", True, "ddim eta=0"),
    ("k-diffusion:dpmpp_2m", False, "ddim eta=0"),
    # the fast solvers (issue 10), each against its own counterparts
    ("k-diffusion:euler", True, "euler"),
    ("k-diffusion:heun", True, "heun"),
    ("diffusers:Heun", True, "heun"),
    ("k-diffusion:dpmpp_2m", True, "dpmpp_2m"),
    ("diffusers:DPMSolverMultistep", True, "dpmpp_2m"),
    ("diffusers:UniPC", True, "unipc"),
    ("k-diffusion:lms", True, "ipndm"),
    ("diffusers:LMS", True, "ipndm"),
    ("k-diffusion:dpmpp_2m_sde", True, "dpmpp_2m_sde"),
]
STOCK_8192 = (20, 5)  # the stock k-diffusion wrapper at batch 8192: steps, most repeats


def peer_vs_scoregen(peer, case: str, batch: int, repeats: int, device: str):
    """((median, best) us per step of the peer, (median, best) of scoregen's ``case``), alternating run by run."""
    _, name, o1, o2 = next(c for c in CASES if c[0] == case)
    options = o1 if batch == 1 else o2
    model = peer.model
    steps = options.get("steps") or len(model.schedule)
    if batch > 1 and getattr(peer, "cached", True) is False:
        steps, repeats = STOCK_8192[0], min(repeats, STOCK_8192[1])
    nfe = peer.nfe_for(steps)
    peer.run(nfe, batch, 0)  # warm-up
    sg.sample(model, name, batch, seed=0, progress=False, device=device, **options)
    ours, theirs = [], []
    for r in range(repeats):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            if device == "cuda":
                torch.cuda.synchronize()
            if k == 0:
                res = sg.sample(model, name, batch, seed=r, progress=False, device=device, **options)
                ours.append(res.wall_time / res.nfe * 1e6)
            else:
                run = peer.run(nfe, batch, r)
                theirs.append(run.wall_time / run.nfe * 1e6)
    return (statistics.median(theirs), min(theirs)), (statistics.median(ours), min(ours)), steps


def lookup_us(wrapper, batch: int, repeats: int) -> tuple[float, float]:
    sigma = torch.full((batch,), 3.3)
    wrapper.sigma_to_t(sigma)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            wrapper.sigma_to_t(sigma)
        times.append((time.perf_counter() - start) / 5 * 1e6)
    return statistics.median(times), min(times)


def peer_tables(repeats: int, device: str) -> None:
    import dataclasses

    from scoregen.bench import peers as P

    model = zero_model()
    found, skipped = P.peers_for(model, names=sorted({label for label, _, _ in PEER_CASES}))
    by_label = {p.label: p for p in found}
    for reason in skipped:
        print(f"skipped: {reason}")
    versions = {p.library: p.config["version"] for p in found}
    print()
    print("Peers on the same model (" + ", ".join(f"{lib} {v}" for lib, v in versions.items()) + "), alternating run by "
          f"run with the scoregen sampler named; microseconds per step, median / best of {repeats} runs; ratio = peer "
          "median / scoregen median")
    print(f"| {'peer':<54} | {'steps':>10} | {'batch 1':>13} | {'scoregen':>13} | {'ratio':>5} | {'batch 8192':>15} | "
          f"{'scoregen':>15} | {'ratio':>5} |")
    print(f"| {'-' * 54} | {'-' * 9}: | {'-' * 12}: | {'-' * 12}: | ----: | {'-' * 14}: | {'-' * 14}: | ----: |")
    for label, cached, case in PEER_CASES:
        peer = by_label.get(label)
        if peer is None:
            continue
        if peer.library == "k-diffusion":
            peer = dataclasses.replace(peer, cached=cached, device=device)
            what = f"{label} ({'cached' if cached else 'stock'} wrapper)"
        else:
            peer = dataclasses.replace(peer, device=device)
            what = label
        (p1, s1, n1), (p2, s2, n2) = (peer_vs_scoregen(peer, case, b, repeats, device) for b in (1, 8192))
        print(f"| {what + ' vs ' + case:<54} | {f'{n1} / {n2}':>10} | {p1[0]:>6.1f} / {p1[1]:>4.1f} | "
              f"{s1[0]:>6.1f} / {s1[1]:>4.1f} | {p1[0] / s1[0]:>5.2f} | {p2[0]:>7.0f} / {p2[1]:>5.0f} | "
              f"{s2[0]:>7.0f} / {s2[1]:>5.0f} | {p2[0] / s2[0]:>5.2f} |")
    if "k-diffusion" in versions:
        print()
        print(f"k-diffusion's sigma -> t lookup alone (DiscreteEpsDDPMDenoiser.sigma_to_t, T = 1000, one sigma for the "
              f"batch), microseconds per call, median / best of {repeats}")
        print(f"| {'wrapper':<8} | {'batch 1':>13} | {'batch 8192':>21} |")
        print(f"| {'-' * 8} | {'-' * 12}: | {'-' * 20}: |")
        for cached in (False, True):
            wrapper = P.kdiffusion_denoiser(model, cached=cached)
            (a, b), (c, d) = lookup_us(wrapper, 1, repeats), lookup_us(wrapper, 8192, min(repeats, 5) if not cached else repeats)
            print(f"| {'cached' if cached else 'stock':<8} | {a:>6.1f} / {b:>4.1f} | {c:>10.1f} / {d:>8.1f} |")


if __name__ == "__main__":
    main()
