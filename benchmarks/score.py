"""Benchmark the scorer against the two loops it replaces, on the same model and pairs.

- atlas: `atlas.scoring.engine` (length-sorted token-budget batches, head on scored positions only,
  float32 logsumexp, float64 sums);
- batch-1 loop, like the authors' released calculator: one text per forward pass, a
  full-vocabulary log_softmax over every position;
- padded fixed-batch loop, like lm-evaluation-harness `loglikelihood`: sorted by length
  descending, a fixed batch size, right padding, full log_softmax over every position.

All three score the same requests (the `base` conditional piece of the sample pairs under the
model's chat template) and report tokens per second (tokens fed through the model) and the max
absolute difference of their per-pair log-likelihoods from atlas's.

On CPU the model is a Llama with random weights (hidden 512, 8 layers, vocab 32k, float32) and
the zoo's Llama-3-style tokenizer. With CUDA, it also builds Llama-3.1-8B and Qwen2.5-7B shapes
from their configs in bfloat16 and reports model FLOPs utilisation: 2 x parameters (all but the
input embedding) x tokens/s / the bf16 matmul peak measured on the card.

Shared prefixes: it also scores all four prompt variants and the unconditional piece of the
sample pairs, and of a synthetic set shaped like tulu-3 (long responses), three ways: each
request alone, as prefix trees one per row (padded), and as prefix trees packed several per
row (a document mask); it prints tokens and FLOPs through the model, wall time, and the largest
difference from scoring each request alone.

    python benchmarks/score.py              # CPU run (several minutes on 2 cores)
    python benchmarks/score.py --quick      # a smoke run in seconds
    python benchmarks/score.py --gpu-only   # only the CUDA shapes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from atlas.scoring.engine import Scorer, score_items
from atlas.scoring.prefixes import build_trees
from atlas.scoring.templates import Request, build_requests
from atlas.testing import zoo
from atlas.textsets import Item, read_items, sample_path

GPU_SHAPES: dict[str, dict[str, Any]] = {
    "Llama-3.1-8B": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    ),
    "Qwen2.5-7B": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_atlas(model: Any, requests: list[Request], batch_tokens: int | None) -> np.ndarray:
    """atlas's engine."""
    return Scorer(model, batch_tokens=batch_tokens).score(requests)


def run_batch1(model: Any, requests: list[Request]) -> np.ndarray:
    """One request per forward, full-vocabulary log_softmax (the authors' calculator)."""
    device = next(model.parameters()).device
    out = np.zeros(len(requests))
    with torch.inference_mode():
        for i, r in enumerate(requests):
            ids = torch.tensor([list(r.ids)], device=device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            targets = ids[0, r.start :]
            out[i] = float(logp[r.start - 1 : -1].gather(1, targets[:, None]).double().sum())
    return out


def run_padded(model: Any, requests: list[Request], batch_size: int) -> np.ndarray:
    """Length-sorted fixed-size batches, right-padded, full log_softmax (lm-eval-harness)."""
    device = next(model.parameters()).device
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].ids))
    out = np.zeros(len(requests))
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            chunk = order[lo : lo + batch_size]
            width = len(requests[chunk[0]].ids)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, i in enumerate(chunk):
                ids[b, : len(requests[i].ids)] = torch.tensor(requests[i].ids)
            ids = ids.to(device)
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
            for b, i in enumerate(chunk):
                r = requests[i]
                targets = ids[b, r.start : len(r.ids)]
                picked = logp[b, r.start - 1 : len(r.ids) - 1].gather(1, targets[:, None])
                out[i] = float(picked.double().sum())
    return out


def timed(fn: Any, device: torch.device, *args: Any) -> tuple[np.ndarray, float]:
    _sync(device)
    start = time.perf_counter()
    values = fn(*args)
    _sync(device)
    return values, time.perf_counter() - start


def cpu_model(hidden: int, layers: int, vocab: int) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=2048, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.eval()


def compare(
    label: str, model: Any, requests: list[Request], *, batch_size: int,
    batch_tokens: int | None, baseline_subset: int | None = None,
) -> dict[str, Any]:
    """Time the three methods on the same requests; baselines may run on a prefix subset."""
    device = next(model.parameters()).device
    tokens = sum(len(r.ids) for r in requests)
    run_atlas(model, requests[:4], batch_tokens)  # warm-up
    values, seconds = timed(run_atlas, device, model, requests, batch_tokens)
    rows = {"atlas": (tokens / seconds, 0.0)}
    sub = requests[:baseline_subset] if baseline_subset else requests
    sub_tokens = sum(len(r.ids) for r in sub)
    for name, fn, args in (
        ("batch-1 loop (authors' calculator)", run_batch1, ()),
        (f"padded batch {batch_size} (lm-eval-harness)", run_padded, (batch_size,)),
    ):
        fn(model, sub[:2], *args)  # warm-up
        got, secs = timed(fn, device, model, sub, *args)
        rows[name] = (sub_tokens / secs, float(np.abs(got - values[: len(sub)]).max()))
    result = {
        "setup": label, "requests": len(requests), "tokens": tokens,
        "scored_tokens": sum(r.scored for r in requests),
        "methods": {
            name: {"tokens_per_s": round(tps, 1),
                   "speedup_of_atlas": round(rows["atlas"][0] / tps, 2),
                   "max_abs_diff_vs_atlas": diff}
            for name, (tps, diff) in rows.items()
        },
    }  # fmt: skip
    print_table(result)
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['setup']}: {result['requests']} pairs, {result['tokens']:,} tokens "
          f"({result['scored_tokens']:,} scored)")
    print(f"  {'method':<42} {'tokens/s':>12} {'atlas is':>9} {'max |diff| (nats)':>18}")
    for name, row in result["methods"].items():
        print(f"  {name:<42} {row['tokens_per_s']:>12,.0f} {row['speedup_of_atlas']:>8.2f}x "
              f"{row['max_abs_diff_vs_atlas']:>18.2e}")
    if "mfu" in result:
        print(f"  atlas MFU {result['mfu']:.1%} (bf16 peak {result['peak_tflops']:.0f} TFLOP/s, "
              f"{result['params'] / 1e9:.2f}B parameters)")


def cpu_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The main CPU shape, and a small one (hidden 128, 2 layers) unless --quick."""
    with tempfile.TemporaryDirectory() as tmp:
        zoo.build_tokenizer(Path(tmp), "llama3")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tmp)
    items = read_items(sample_path())[: args.items]
    requests = build_requests(tokenizer, items, kind="conditional")
    shapes = [(args.hidden, args.layers)]
    if not args.quick and args.small:
        shapes.append((128, 2))
    results = []
    for hidden, layers in shapes:
        model = cpu_model(hidden, layers, args.vocab)
        params = sum(p.numel() for p in model.parameters())
        label = (f"CPU, Llama random weights (hidden {hidden}, {layers} layers, "
                 f"vocab {args.vocab}, {params / 1e6:.0f}M params, float32, "
                 f"{torch.get_num_threads()} threads)")  # fmt: skip
        results.append(compare(label, model, requests, batch_size=args.batch_size,
                               batch_tokens=args.batch_tokens))  # fmt: skip
    return results


def tulu_shaped(n: int, seed: int = 0) -> list[Item]:
    """Pairs shaped like tulu-3 SFT: prompts of ~120 words, responses of ~400 (long tail)."""
    words = " ".join(f"{it.prompt} {it.response}" for it in read_items(sample_path())).split()
    rng = np.random.default_rng(seed)

    def text(median: float, cap: int) -> str:
        k = int(min(cap, max(4, rng.lognormal(np.log(median), 0.8))))
        at = int(rng.integers(0, len(words) - k))
        return " ".join(words[at : at + k])

    return [Item(prompt=text(120, 1500), response=text(400, 2500)) for _ in range(n)]


def flops(model: Any, pieces: list[list[Request]], shared: bool) -> dict[str, float]:
    """Tokens through the model and useful FLOPs: 2 x params x tokens + attention (4 d L keys)."""
    flat = [(r.ids, r.start) for reqs in pieces for r in reqs]
    groups = [i for reqs in pieces for i in range(len(reqs))]
    unique = dict(zip(flat, groups, strict=True))  # first group wins, as in the engine
    text = model.config
    embedding = model.get_input_embeddings().weight.numel()
    counted = sum(p.numel() for p in model.parameters()) - embedding
    if shared:
        trees = build_trees(list(unique), list(unique.values()), budget=10**9)
        tokens = sum(len(t) for t in trees)
        keys = sum(sum(t.positions) + len(t) for t in trees)  # a token sees its ancestors
    else:
        tokens = sum(len(ids) for ids, _ in unique)
        keys = sum(len(ids) * (len(ids) + 1) // 2 for ids, _ in unique)
    attention = 4 * text.num_hidden_layers * text.hidden_size * keys
    return {"tokens": tokens, "flops": 2 * counted * tokens + attention}


def prefix_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    """All pieces of the sample and a tulu-shaped set: alone vs prefix trees (padded, packed)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        zoo.build_tokenizer(Path(tmp), "llama3")
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    model = cpu_model(args.hidden, args.layers, args.vocab)
    model.config.max_position_embeddings = 8192
    # A prefix tree is cut at the batch budget: long pairs need a budget of several requests.
    sets = [("sample", read_items(sample_path())[: args.items], args.items, args.batch_tokens),
            ("tulu-shaped", tulu_shaped(args.tulu_items), args.tulu_timed, 8192)]  # fmt: skip
    pieces = [(v, "conditional") for v in ("base", "cot", "repeat", "repeat+cot")]
    pieces.append(("base", "unconditional"))
    results = []
    for label, items, timed_items, budget in sets:
        requests = [build_requests(tokenizer, items, kind=k, variant=v) for v, k in pieces]
        alone, tree = flops(model, requests, False), flops(model, requests, True)
        row: dict[str, Any] = {
            "set": label, "pairs": len(items), "tokens_alone": alone["tokens"],
            "tokens_shared": tree["tokens"], "flops_alone": alone["flops"],
            "flops_shared": tree["flops"],
            "flops_saved": 1 - tree["flops"] / alone["flops"],
        }  # fmt: skip
        sub = items[:timed_items]
        runs = {}
        for name, kwargs in (("alone", {"share_prefixes": False}), ("trees, padded", {}),
                             ("trees, packed", {"pack": True})):  # fmt: skip
            engine = Scorer(model, batch_tokens=budget, **kwargs)
            score_items(model, tokenizer, sub[:2], pieces=pieces, scorer=engine)  # warm-up
            engine = Scorer(model, batch_tokens=budget, **kwargs)
            # CPU seconds of this process: less sensitive than wall time to other jobs.
            start, cpu = time.perf_counter(), time.process_time()
            got = score_items(model, tokenizer, sub, pieces=pieces, scorer=engine)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            runs[name] = (cpu, got, engine.stats.padded_tokens, wall)
        base = runs["alone"][1]
        row["timed_pairs"] = len(sub)
        row["runs"] = {
            name: {"cpu_seconds": round(secs, 2), "speedup": round(runs["alone"][0] / secs, 2),
                   "wall_seconds": round(wall, 2), "padded_tokens": padded,
                   "max_abs_diff": float(max(np.abs(got[k].values - base[k].values).max()
                                             for k in base))}
            for name, (secs, got, padded, wall) in runs.items()
        }  # fmt: skip
        print(f"\nshared prefixes, {label}: {len(items)} pairs x 5 pieces; tokens "
              f"{row['tokens_alone']:,} alone, {row['tokens_shared']:,} as prefix trees; FLOPs "
              f"saved {row['flops_saved']:.1%}")
        print(f"  CPU time on {len(sub)} pairs ({torch.get_num_threads()} threads, "
              f"batch budget {budget}):")
        for name, r in row["runs"].items():
            print(f"  {name:<16} {r['cpu_seconds']:>8.2f} CPU s ({r['wall_seconds']:.1f} s wall) "
                  f"{r['speedup']:>5.2f}x  "
                  f"padded tokens {r['padded_tokens']:>9,}  max |diff| {r['max_abs_diff']:.1e}")
        results.append(row)
    return results


def bf16_peak(device: torch.device, n: int = 8192, reps: int = 30) -> float:
    """Measured bf16 matmul throughput in FLOP/s."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def synthetic_requests(n: int, vocab: int, seed: int = 0) -> list[Request]:
    """Pairs shaped like chat data: 256-1024 tokens, the response the last 40-70%."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(256, 1025))
        start = int(length * rng.uniform(0.3, 0.6))
        out.append(Request(tuple(int(t) for t in rng.integers(0, vocab, length)), start))
    return out


def gpu_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    from transformers import AutoConfig, AutoModelForCausalLM

    device = torch.device("cuda")
    peak = bf16_peak(device)
    results = []
    for name, shape in GPU_SHAPES.items():
        fields = dict(shape)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.bfloat16, attn_implementation="sdpa"
            ).eval()
        params = sum(p.numel() for p in model.parameters())
        counted = params - model.get_input_embeddings().weight.numel()
        requests = synthetic_requests(args.gpu_items, config.vocab_size)
        label = f"CUDA {torch.cuda.get_device_name(device)}, {name} shape, random weights, bf16"
        result = compare(label, model, requests, batch_size=args.batch_size,
                         batch_tokens=args.batch_tokens, baseline_subset=args.gpu_baseline_items)
        tps = result["methods"]["atlas"]["tokens_per_s"]
        result.update(mfu=2 * counted * tps / peak, peak_tflops=peak / 1e12, params=counted)
        print(f"  atlas MFU {result['mfu']:.1%} (bf16 peak {peak / 1e12:.0f} TFLOP/s measured, "
              f"{counted / 1e9:.2f}B parameters counted)")
        results.append(result)
        del model
        torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=96, help="sample pairs on CPU")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=8, help="the padded loop's batch")
    parser.add_argument("--batch-tokens", type=int, default=None, help="atlas's budget")
    parser.add_argument("--gpu-items", type=int, default=512)
    parser.add_argument("--gpu-baseline-items", type=int, default=64)
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--no-small", dest="small", action="store_false",
                        help="skip the small CPU shape (hidden 128, 2 layers)")
    parser.add_argument("--tulu-items", type=int, default=300, help="tulu-shaped pairs (FLOPs)")
    parser.add_argument("--tulu-timed", type=int, default=12, help="of them, timed on CPU")
    parser.add_argument("--no-prefixes", dest="prefixes", action="store_false",
                        help="skip the shared-prefix comparison")
    parser.add_argument("--only-prefixes", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.hidden, args.layers, args.vocab = 8, 128, 2, 4096
        args.gpu_items, args.gpu_baseline_items = 32, 8
        args.tulu_items, args.tulu_timed = 8, 2
    results: list[dict[str, Any]] = []
    if not args.gpu_only and not args.only_prefixes:
        results.extend(cpu_benchmark(args))
    if not args.gpu_only and args.prefixes:
        results.extend(prefix_benchmark(args))
    if torch.cuda.is_available():
        results.extend(gpu_benchmark(args))
    elif args.gpu_only:
        print("no CUDA device: nothing to do", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
