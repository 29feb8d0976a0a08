"""The scorer on a real model against two peers, on the same prompt-response pairs.

SmolLM2-135M-Instruct (`atlas.testing.real.materialise()`, float32 on CPU): atlas's scorer
(`score_items`, batched) against (1) a naive float64 reference written from the README's
definition, one pair per forward pass, and (2) lm-evaluation-harness's `loglikelihood` (HFLM on
the same loaded model and tokenizer; `pip install lm_eval`), given context = the rendered
generation prompt and continuation = the rest of the rendered conversation. lm-eval moves the
context's trailing whitespace into the continuation, so with ChatML (the generation prompt ends
in "\\n") it also scores that newline: its numbers exceed atlas's by log p(newline), which this
script measures separately and subtracts. Prints the largest differences in nats per pair.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16, help="sample pairs to compare")
    opts = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from atlas.scoring.engine import score_items
    from atlas.testing import real
    from atlas.textsets import read_items, sample_path

    folder = real.materialise()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    items = read_items(sample_path())[: opts.pairs]

    t = time.perf_counter()
    ours = score_items(model, tokenizer, items, variants=("base",))[("base", "conditional")]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    naive = np.array([real.reference_loglik(model, tokenizer, i.prompt, i.response) for i in items])
    t_naive = time.perf_counter() - t
    rows = [("naive float64 reference, batch 1", np.abs(ours.values - naive).max(), t_naive)]

    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        print("lm_eval is not installed (pip install lm_eval): only the naive reference is run")
    else:
        contexts, continuations = [], []
        for item in items:
            user = [{"role": "user", "content": item.prompt}]
            prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(
                [*user, {"role": "assistant", "content": item.response}], tokenize=False
            )
            contexts.append(prefix)
            continuations.append(full[len(prefix) :])
        lm = HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=8, max_length=8192, device="cpu"
        )

        def loglikelihood(pairs: list[tuple[str, str]]) -> np.ndarray:
            requests = [
                Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
                for i, pair in enumerate(pairs)
            ]
            return np.array([value for value, _ in lm.loglikelihood(requests)])

        t = time.perf_counter()
        harness = loglikelihood(list(zip(contexts, continuations, strict=True)))
        t_harness = time.perf_counter() - t
        # What lm-eval adds: the context's trailing whitespace, scored as continuation.
        moved = [(c.rstrip(), c[len(c.rstrip()) :]) for c in contexts]
        newline = loglikelihood(moved)
        rows.append(
            ("lm-eval loglikelihood, as is", np.abs(ours.values - harness).max(), t_harness)
        )
        rows.append((
            "lm-eval minus log p(moved newline)",
            np.abs(ours.values - (harness - newline)).max(),
            t_harness,
        ))  # fmt: skip
        print(f"log p(moved newline): mean {newline.mean():.5f} nats, min {newline.min():.5f}")

    tokens = int(ours.token_counts.sum())
    mean = ours.values.mean()
    print(
        f"{len(items)} pairs, {tokens} response tokens, mean {mean:.3f} nats; atlas {t_ours:.1f} s"
    )
    print("| peer | max abs difference from atlas (nats per pair) | seconds |")
    print("| --- | --- | --- |")
    for name, diff, seconds in rows:
        print(f"| {name} | {diff:.2e} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
