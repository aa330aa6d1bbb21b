"""What a jump offset costs per forward pass of a bfloat16 LoRA model: a ratio against no offset (issue 34).

    python benchmarks/offset_cost.py --threads 1 [--repeats 50] [--layers 0] [--batch 4] [--tokens 128]

SmolLM2-135M-Instruct (local, no hub) loaded in bfloat16 (``--layers N``: its first N decoder layers only; 0, the
default: all 30), PEFT LoRA r=16, alpha 32 on all linear layers (the demo's settings; PEFT keeps the factors in
float32 on a bfloat16 base), eval mode, ``torch.no_grad``, random token ids. Three arms: no offset, and a
``JumpOffset`` of rank 16 or 64 (64 is the default cap, 4 x the LoRA rank) on every LoRA layer, its random factors
scaled to 1e-3 of the base weight's norm. Two forwards: the decoder stack (every LoRA layer and offset, no lm_head)
and the whole model with logits at every position (the lm_head has no LoRA layer and no offset, so its fixed cost
brings the ratio closer to 1). Each repeat times both forwards under each arm, the arms' order rotated by one per
repeat, all in this process, so other jobs' load hits every arm alike; an offset arm's ratio is taken against the
no-offset pass of the same repeat and forward.

``--threads 1`` where other jobs share the cores: with torch's default of one thread per core, forward times here
varied more than tenfold while other jobs ran (threads waiting on a descheduled peer); with one thread they held
steady.

Writes ``results/offset_cost.{json,md}``: per forward and arm the median time, the per-repeat ratio's median with a
distribution-free 95% interval for it (order statistics) and its mean ± 95% t-interval, and the arithmetic
estimate ``k(m+n)/(mn)`` per module shape (the offset's multiply-adds over the base weight's).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from common import machine, write_results
from peft import LoraConfig, get_peft_model
from stats import INTERVAL, mean_interval, with_interval

from rlvr_extrap.experiments.models import load_model
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.runtime.lora import LoraModule, find_lora_modules

LORA_RANK = 16
OFFSET_RANKS = (16, 4 * LORA_RANK)
OFFSET_SIZE = 1e-3
"""An offset's norm relative to its base weight's (a jump is typically 1e-4 to 1e-3 of it; timing does not depend on it)."""


def lora_model(layers: int, device: torch.device) -> torch.nn.Module:
    """SmolLM2 in bfloat16, its first ``layers`` decoder layers (0: all), LoRA r=16 on all linear layers, eval mode."""
    model, _ = load_model("smollm2", torch.bfloat16)
    if layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config).to(device).eval()


def random_offsets(modules: dict[str, LoraModule], rank: int, generator: torch.Generator) -> dict[str, LowRank]:
    """Random float32 factors of ``rank`` per module, scaled to ``OFFSET_SIZE`` of the base weight's norm."""
    offsets = {}
    for name, module in modules.items():
        out_features, in_features = module.base_weight.shape
        left = torch.randn(out_features, rank, generator=generator)
        right = torch.randn(rank, in_features, generator=generator)
        left *= OFFSET_SIZE * float(module.base_weight.float().norm()) / float((left @ right).norm())
        offsets[name] = LowRank(left, right)
    return offsets


def attach(modules: dict[str, LoraModule], offsets: dict[str, LowRank] | None) -> None:
    """Hold ``offsets`` on every module (None: take them off)."""
    for name, module in modules.items():
        module.set_offset(None if offsets is None else offsets[name])


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """(median, low, high): the narrowest order-statistic interval symmetric in rank that covers the median with
    probability >= 95% for any continuous distribution (binomial(n, 1/2)); nan bounds where n < 6 allows none."""
    ordered, n = sorted(values), len(values)
    below = 0.0  # P(Binomial(n, 1/2) < j)
    j = 0
    while j < n // 2:
        nxt = below + math.comb(n, j) / 2**n
        if 2 * nxt > 0.05:
            break
        below, j = nxt, j + 1
    if j == 0:
        return statistics.median(values), math.nan, math.nan
    return statistics.median(values), ordered[j - 1], ordered[n - j]


def arithmetic(modules: dict[str, LoraModule]) -> list[dict[str, Any]]:
    """Per module shape: how many such modules, and ``k(m+n)/(mn)`` for each offset rank k (``r(m+n)/(mn)`` for the
    LoRA path beside it); then every LoRA layer together (multiply-adds summed over the modules)."""
    shapes = Counter(
        (name.rsplit(".", 1)[-1], tuple(module.base_weight.shape)) for name, module in modules.items()
    )  # fmt: skip
    rows = []
    for (kind, (m, n)), count in sorted(shapes.items()):
        row = {"module": kind, "out": m, "in": n, "count": count, "lora": LORA_RANK * (m + n) / (m * n)}
        rows.append({**row, **{f"offset_{k}": k * (m + n) / (m * n) for k in OFFSET_RANKS}})
    base = sum(r["count"] * r["out"] * r["in"] for r in rows)
    sides = sum(r["count"] * (r["out"] + r["in"]) for r in rows)
    total = {"module": "all LoRA layers", "out": None, "in": None, "count": len(modules)}
    rows.append({**total, "lora": LORA_RANK * sides / base, **{f"offset_{k}": k * sides / base for k in OFFSET_RANKS}})
    return rows


def measure(
    forwards: dict[str, Callable[[], torch.Tensor]],
    modules: dict[str, LoraModule],
    arms: dict[str, dict[str, LowRank] | None],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, dict[str, list[float]]]:
    """Seconds per forward pass (forward -> arm -> one per repeat); each repeat runs every forward under every arm,
    the arms in an order rotated by one per repeat. First checks that each arm's output differs from the others'."""
    names = list(arms)
    for forward in forwards.values():
        outputs = {}
        for name in names:
            attach(modules, arms[name])
            outputs[name] = forward()
        assert not any(torch.equal(outputs[a], outputs[b]) for a in names for b in names if a < b), "offset not applied"
    seconds: dict[str, dict[str, list[float]]] = {kind: {name: [] for name in names} for kind in forwards}
    for repeat in range(-warmup, repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            attach(modules, arms[name])
            for kind, forward in forwards.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                begin = time.perf_counter()
                forward()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if repeat >= 0:
                    seconds[kind][name].append(time.perf_counter() - begin)
    attach(modules, None)
    return seconds


def summarise(seconds: list[float], baseline: list[float]) -> dict[str, Any]:
    """An arm's times and its per-repeat ratios against ``baseline`` (the no-offset times of the same repeats)."""
    ratios = [t / base for t, base in zip(seconds, baseline, strict=True)]
    median, low, high = median_interval(ratios)
    mean, _, half = mean_interval(ratios)
    return {
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "ratios": ratios,
        "ratio_median": median,
        "ratio_median_interval": [low, high],
        "ratio_mean": mean,
        "ratio_mean_half_width": half,
    }


def markdown(data: dict[str, Any]) -> str:
    """The results file's text."""
    info, settings, load = data["machine"], data["settings"], data["load_average"]
    shared = load["end"][0] > info["cpu_count"] + 0.5
    where = info["cuda"] or f"CPU only, {info['cpu_count']} cores ({info['processor']})"
    threads = "set by --threads" if settings["threads"] else "torch's default here"
    lines = [
        "# Jump offset: cost per forward pass on a bfloat16 LoRA model",
        "",
        f"`{info['command']}` at commit {info['commit']}; {where}, torch {info['torch']}, {info['torch_threads']} "
        f"thread(s) ({threads}; torch's default here is {settings['default_threads']}); load average "
        f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end "
        f"({'other jobs shared the cores' if shared else 'no other heavy job'}); wall time {data['wall_seconds']:.0f} s.",
        "",
        f"SmolLM2-135M-Instruct in bfloat16, {settings['decoder_layers']} of its 30 decoder layers, PEFT LoRA "
        f"r={settings['lora_rank']} alpha {2 * settings['lora_rank']} on all {settings['lora_modules']} linear layers "
        f"of those, LoRA factors {', '.join(settings['lora_dtypes'])} (PEFT's default on a bfloat16 base), eval mode, "
        f"no_grad, batch {settings['batch']} x {settings['tokens']} tokens. Offsets of rank "
        f"{' and '.join(map(str, settings['offset_ranks']))} (random, {settings['offset_size']:g} of each base "
        f"weight's norm) on every LoRA layer. {settings['repeats']} repeats after {settings['warmup']} warm-up "
        "rounds, each timing every forward under every arm, the arms in a rotated order. Decoder stack: "
        "`model.get_base_model().model(input_ids, use_cache=False)`, every LoRA layer, no lm_head; whole model: "
        "`model(input_ids, use_cache=False)`, logits at every position (as a training step's log-probabilities), "
        "the lm_head having no LoRA layer and no offset.",
        "",
        "Ratio = the arm's forward time / the no-offset forward of the same repeat: its median with a "
        f"distribution-free 95% interval for the median (order statistics), and its mean {INTERVAL} (t).",
        "",
        "| forward | arm | median time (s) | ratio: median [95% interval] | ratio: mean ± 95% interval |",
        "|---|---|---|---|---|",
    ]
    for kind, arms in data["forwards"].items():
        for name, r in arms.items():
            if name == "none":
                lines.append(f"| {kind} | no offset | {r['median_seconds']:.3f} | 1 | 1 |")
                continue
            low, high = r["ratio_median_interval"]
            lines.append(
                f"| {kind} | {name} | {r['median_seconds']:.3f} | {r['ratio_median']:.3f} [{low:.3f}, {high:.3f}] | "
                f"{with_interval(r['ratio_mean'], r['ratio_mean_half_width'], 3)} |"
            )
    ranks = settings["offset_ranks"]
    lines += [
        "",
        "Arithmetic estimate: an offset of rank k on an m x n (out x in) weight costs k(m+n) multiply-adds per token "
        "against the base matmul's mn, i.e. k(m+n)/(mn) of it (the LoRA path beside it: r(m+n)/(mn)); the last row "
        "sums over every LoRA layer. It counts multiply-adds only: the offset runs in float32 (on this CPU a float32 "
        "matmul is slower than a bfloat16 one) and a LoRA layer with an offset runs three Python hooks.",
        "",
        f"| module | out x in | count | LoRA r={settings['lora_rank']} | "
        + " | ".join(f"offset k={k}" for k in ranks)
        + " |",
        "|---|---|---|---|" + "---|" * len(ranks),
    ]
    for row in data["arithmetic"]:
        shape = f"{row['out']} x {row['in']}" if row["out"] else "–"
        cells = " | ".join(f"{row[f'offset_{k}']:.3f}" for k in ranks)
        lines.append(f"| {row['module']} | {shape} | {row['count']} | {row['lora']:.3f} | {cells} |")
    if not info["cuda"]:
        lines += [
            "",
            "A GPU measurement is still missing: no GPU machine was lent to this task. A GPU's balance of bfloat16 "
            "and float32 throughput and per-kernel overhead differs from this CPU's, so the ratios above need not "
            "carry over; the script runs there as it is.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=0, help="decoder layers kept (0: all 30)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds of every arm first")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    start = time.perf_counter()
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = lora_model(args.layers, device)
    modules = find_lora_modules(model)
    generator = torch.Generator().manual_seed(0)
    arms: dict[str, dict[str, LowRank] | None] = {"none": None}
    arms.update({f"rank {k}": random_offsets(modules, k, generator) for k in OFFSET_RANKS})
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens), generator=generator).to(device)
    decoder_stack = model.get_base_model().model  # every LoRA layer, no lm_head
    forwards = {
        "decoder stack": lambda: decoder_stack(input_ids=ids, use_cache=False).last_hidden_state,
        "whole model": lambda: model(input_ids=ids, use_cache=False).logits,
    }
    load_start = os.getloadavg()
    with torch.no_grad():
        seconds = measure(forwards, modules, arms, args.repeats, args.warmup, device)
    load_end = os.getloadavg()
    settings = {
        **vars(args),
        "default_threads": default_threads,
        "decoder_layers": model.config.num_hidden_layers,
        "lora_rank": LORA_RANK,
        "lora_dtypes": sorted({str(p.dtype) for n, p in model.named_parameters() if "lora_" in n}),
        "lora_modules": len(modules),
        "offset_ranks": list(OFFSET_RANKS),
        "offset_size": OFFSET_SIZE,
    }
    data = {
        "machine": machine(),
        "settings": settings,
        "load_average": {"start": load_start, "end": load_end},
        "wall_seconds": time.perf_counter() - start,
        "forwards": {
            kind: {name: summarise(times, by_arm["none"]) for name, times in by_arm.items()}
            for kind, by_arm in seconds.items()
        },
        "arithmetic": arithmetic(modules),
    }
    text = markdown(data)
    write_results("offset_cost", data, text)
    print(text)


if __name__ == "__main__":
    main()
