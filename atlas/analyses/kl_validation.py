"""KL validation (Section 6): Monte Carlo KL from sampled responses vs the vector estimate.

Each model answers every prompt (temperature 1.0, top-p 0.95, top-k 50, seeded); every model
scores every response as a conditional log-likelihood; `KL(p_i || p_j)` is estimated as the mean
over prompts of `log p_i(y | x) − log p_j(y | x)` for `y ~ p_i(· | x)`. Symmetrised, it is
compared with `||ξ_i − ξ_j||² / (2N)` from the stored centred conditional vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas import textsets
from atlas.analyses import plots
from atlas.analyses.common import bootstrap_ci, pearson, plain, spearman
from atlas.errors import ModelFailure, UsageError
from atlas.scoring import loading
from atlas.scoring.engine import score_items
from atlas.scoring.templates import context_text, has_chat_template
from atlas.space import matrices, vectors
from atlas.textsets import Item

if TYPE_CHECKING:
    from atlas.store import Store


# --- Monte Carlo KL ---------------------------------------------------------------------------
def mc_kl_terms(logp: np.ndarray) -> np.ndarray:
    """Per-prompt KL terms `T[i, j, s] = log p_i(y | x_s) − log p_j(y | x_s)`, y from model i.

    `logp[i, j, s]` (or `[i, j, s, k]` for k samples per prompt) is model j's conditional
    log-likelihood of model i's response to prompt s; samples are averaged per prompt.
    """
    values = np.asarray(logp, dtype=np.float64)
    if values.ndim == 4:
        values = values.mean(axis=3)
    if values.ndim != 3 or values.shape[0] != values.shape[1]:
        raise ValueError("logp must be models x models x prompts [x samples]")
    own = values[np.arange(values.shape[0]), np.arange(values.shape[0])]  # i x s
    return own[:, None, :] - values


def mc_kl(logp: np.ndarray, prompts: np.ndarray | None = None) -> np.ndarray:
    """Monte Carlo `KL(p_i || p_j)` for every ordered pair (nats per response)."""
    terms = mc_kl_terms(logp)
    if prompts is not None:
        terms = terms[:, :, prompts]
    return terms.mean(axis=2)


def symmetrise(kl: np.ndarray) -> np.ndarray:
    """`(KL(p_i||p_j) + KL(p_j||p_i)) / 2`, the quantity the vector estimate approximates."""
    values = np.asarray(kl, dtype=np.float64)
    return (values + values.T) / 2.0


def upper_pairs(matrix: np.ndarray) -> np.ndarray:
    """The strictly upper-triangular entries (one per unordered pair), row by row."""
    rows, cols = np.triu_indices(matrix.shape[0], k=1)
    return np.asarray(matrix)[rows, cols]


def vector_kl(cond: np.ndarray) -> np.ndarray:
    """The vector estimate `||ξ_i − ξ_j||² / (2N)` from clipped conditional vectors."""

    return vectors.kl_matrix(vectors.center(cond))


@dataclass
class Comparison:
    """Monte Carlo vs vector KL over the unordered pairs, with bootstrap intervals."""

    mc: np.ndarray
    vector: np.ndarray
    pearson: float
    spearman: float
    pearson_ci: tuple[float, float]
    spearman_ci: tuple[float, float]


def compare(
    logp: np.ndarray, vector: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> Comparison:
    """Correlate symmetrised MC KL with the vector estimate; bootstrap over prompts."""
    terms = mc_kl_terms(logp)
    n_prompts = terms.shape[2]
    vec_pairs = upper_pairs(vector)

    def pairs(idx: np.ndarray | None) -> np.ndarray:
        mean = terms.mean(axis=2) if idx is None else terms[:, :, idx].mean(axis=2)
        return upper_pairs(symmetrise(mean))

    mc_pairs = pairs(None)
    pearson_ci = bootstrap_ci(
        lambda idx: pearson(pairs(idx), vec_pairs), n_prompts, n_boot=n_boot, seed=seed
    )
    spearman_ci = bootstrap_ci(
        lambda idx: spearman(pairs(idx), vec_pairs), n_prompts, n_boot=n_boot, seed=seed
    )
    return Comparison(
        mc=symmetrise(terms.mean(axis=2)),
        vector=np.asarray(vector, dtype=np.float64),
        pearson=pearson(mc_pairs, vec_pairs),
        spearman=spearman(mc_pairs, vec_pairs),
        pearson_ci=pearson_ci,
        spearman_ci=spearman_ci,
    )


# --- the experiment: generate, cross-score, compare --------------------------------------------
TEMPERATURE = 1.0
TOP_P = 0.95
TOP_K = 50
MAX_NEW_TOKENS = 128
GENERATION_BATCH = 16


@dataclass
class ValidationResult:
    """Monte Carlo and vector KL for every pair of models, and how well they agree."""

    textset: str
    models: list[str]
    prompts: int
    samples: int
    max_new_tokens: int
    seed: int
    mc: np.ndarray  # ordered pairs: mc[i, j] = KL(p_i || p_j), nats per response
    comparison: Comparison
    vector_source: dict[str, str]
    response_tokens: dict[str, float]
    examples: dict[str, list[str]]
    seconds: float = 0.0

    def pairs(self) -> list[dict[str, Any]]:
        """One row per unordered pair: both directions, symmetrised MC, vector estimate."""
        out = []
        for i, j in zip(*np.triu_indices(len(self.models), k=1), strict=True):
            out.append({
                "a": self.models[i], "b": self.models[j],
                "mc_ab": self.mc[i, j], "mc_ba": self.mc[j, i],
                "mc_sym": self.comparison.mc[i, j], "vector": self.comparison.vector[i, j],
            })
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings, correlations with intervals, and per-pair values."""
        c = self.comparison
        return plain({
            "analysis": "validate-kl",
            "textset": self.textset,
            "models": self.models,
            "prompts": self.prompts,
            "samples": self.samples,
            "max_new_tokens": self.max_new_tokens,
            "sampling": {"temperature": TEMPERATURE, "top_p": TOP_P, "top_k": TOP_K},
            "seed": self.seed,
            "pearson": c.pearson,
            "pearson_ci95": list(c.pearson_ci),
            "spearman": c.spearman,
            "spearman_ci95": list(c.spearman_ci),
            "pairs": self.pairs(),
            "vector_source": self.vector_source,
            "mean_response_tokens": self.response_tokens,
            "examples": self.examples,
            "seconds": round(self.seconds, 2),
        })


def parse_model_refs(models: Sequence[str]) -> list[tuple[str | None, str]]:
    """`NAME=PATH`, a local folder or a Hub repo id -> (store name or None, reference)."""
    out: list[tuple[str | None, str]] = []
    for raw in models:
        entry = raw.strip()
        if not entry:
            continue
        name, sep, ref = entry.partition("=")
        out.append((name.strip(), ref.strip()) if sep else (None, entry))
    return out


def _seed_for(seed: int, model: int, sample: int, batch: int) -> int:
    return (seed * 1_000_003 + model * 10_007 + sample * 101 + batch) % (2**63 - 1)


def generate(
    loaded: Any,
    prompts: Sequence[str],
    *,
    samples: int = 1,
    max_new_tokens: int = MAX_NEW_TOKENS,
    seed: int = 0,
    model_index: int = 0,
    batch_size: int = GENERATION_BATCH,
) -> tuple[list[list[str]], float]:
    """Sample responses (prompts x samples) with the model's chat template; mean new tokens.

    Sampling: temperature 1.0, top-p 0.95, top-k 50, at most `max_new_tokens` new tokens.
    Seeded per (seed, model, sample, batch): reproducible for the same batch size.
    """
    import torch


    model, tok = loaded.model, loaded.tokenizer
    if not has_chat_template(tok):
        raise ModelFailure("no-chat-template", "the tokenizer has no chat template")
    # Generation starts where the scored response starts: the finished-turn context.
    encoded = [
        tok(context_text(tok, p), add_special_tokens=False)["input_ids"] for p in prompts
    ]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    pad = 0 if pad is None else int(pad)
    stops = {pad, *_eos_ids(model, tok)}
    device = next(model.parameters()).device
    out: list[list[str]] = [[] for _ in prompts]
    new_tokens: list[int] = []
    for sample in range(samples):
        for b, start in enumerate(range(0, len(encoded), batch_size)):
            chunk = encoded[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, row in enumerate(chunk):  # left padding, so every row ends at the prompt
                ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
                mask[r, width - len(row):] = 1
            torch.manual_seed(_seed_for(seed, model_index, sample, b))
            with torch.inference_mode():
                gen = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                    temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K,
                    max_new_tokens=max_new_tokens, pad_token_id=pad,
                )
            for r, row in enumerate(gen[:, width:].tolist()):
                cut = next((k for k, t in enumerate(row) if t in stops), len(row))
                new_tokens.append(min(cut + 1, len(row)))
                out[start + r].append(tok.decode(row[:cut], skip_special_tokens=True))
    return out, float(np.mean(new_tokens)) if new_tokens else 0.0


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tok.eos_token_id is not None:
        found.add(tok.eos_token_id)
    return {int(i) for i in found}


def validate_kl(
    store: Store,
    models: Sequence[str],
    textset: str,
    *,
    prompts: int | None = None,
    samples: int = 1,
    max_new_tokens: int = MAX_NEW_TOKENS,
    seed: int = 0,
    n_boot: int = 1000,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    batch_size: int = GENERATION_BATCH,
    log: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Generate, cross-score and compare Monte Carlo KL with the vector estimate.

    `models` are store names of local folders (`NAME=PATH`), folders, or Hub repo ids. Each
    model is loaded twice (the last one once): to answer every prompt, then to score every
    model's answers, those to one prompt as one prefix tree (the prompt runs once).
    """
    import time


    say = log or (lambda _msg: None)
    started = time.perf_counter()
    refs = parse_model_refs(models)
    if len(refs) < 3:
        raise UsageError("validate-kl needs at least three models (correlations over pairs)")
    if samples < 1 or max_new_tokens < 1:
        raise UsageError("`samples` and `max_new_tokens` must be positive")
    ts, items = textsets.load_items(store, textset)
    if ts.kind != "pairs":
        raise UsageError(f"text set {textset!r} is plain; validate-kl needs prompts")
    chosen = items[: prompts] if prompts else items
    if len(chosen) < 2:
        raise UsageError("validate-kl needs at least two prompts")
    resolved = [loading.resolve(ref, name=name) for name, ref in refs]
    names = [r.repo_id for r in resolved]
    if len(set(names)) != len(names):
        raise UsageError(f"models repeat: {', '.join(names)}")

    # Stored conditional vectors where the store has them (same revision or newest).
    ids = {n: row.id for n in names if (row := store.model(n)) is not None}
    stored = matrices.load(store, ts, "base", "conditional", model_ids=list(ids.values()),
                           weighted=False)  # fmt: skip
    rows: dict[str, np.ndarray] = {m.repo_id: v for m, v in zip(stored.models, stored.values,
                                                                strict=True)}

    def load(i: int) -> Any:
        folder = loading.fetch(resolved[i])
        say(f"loading {names[i]}")
        return loading.load(folder, device=device, dtype=dtype,
                            trust_remote_code=trust_remote_code)

    m, p = len(names), len(chosen)
    responses: list[list[list[str]]] = []
    tokens: dict[str, float] = {}
    loaded = None
    for i in range(m):
        loaded = load(i)
        say(f"{names[i]}: answering {p} prompts x {samples} sample(s)")
        answers, mean_new = generate(
            loaded, [it.prompt for it in chosen], samples=samples, max_new_tokens=max_new_tokens,
            seed=seed, model_index=i, batch_size=batch_size,
        )
        responses.append(answers)
        tokens[names[i]] = mean_new
        if i < m - 1:
            del loaded
            _free()
    logp = np.zeros((m, m, p, samples))
    pairs = [Item(prompt=chosen[s].prompt, response=responses[g][s][k])
             for g in range(m) for s in range(p) for k in range(samples)]
    # The m * samples answers to one prompt share its rendered prefix: one prefix tree each.
    by_prompt = [s for _ in range(m) for s in range(p) for _ in range(samples)]
    for j in reversed(range(m)):  # the last model is still loaded
        if loaded is None:
            loaded = load(j)
        say(f"{names[j]}: scoring {len(pairs)} responses")
        values = score_items(loaded.model, loaded.tokenizer, pairs, groups=by_prompt,
                             pieces=[("base", "conditional")])[("base", "conditional")].values
        logp[:, j] = values.reshape(m, p, samples)
        if names[j] not in rows:
            say(f"{names[j]}: no stored vector on {textset}; scoring the text set")
            rows[names[j]] = score_items(loaded.model, loaded.tokenizer, items,
                                         pieces=[("base", "conditional")])[
                ("base", "conditional")].values
        loaded = None
        _free()
    source = {n: ("store" if n in {mm.repo_id for mm in stored.models} else "computed")
              for n in names}

    L, prepared = matrices.prepare(store, ts, np.stack([rows[n] for n in names]), "base",
                                   "conditional")  # fmt: skip
    vector = vector_kl(L if prepared else vectors.clip(L, vectors.clip_threshold(L)))
    comparison = compare(logp, vector, n_boot=n_boot, seed=seed)
    return ValidationResult(
        textset=textset, models=names, prompts=p, samples=samples,
        max_new_tokens=max_new_tokens, seed=seed, mc=mc_kl(logp), comparison=comparison,
        vector_source=source, response_tokens=tokens,
        examples={n: [responses[i][s][0] for s in range(min(2, p))] for i, n in enumerate(names)},
        seconds=time.perf_counter() - started,
    )


def _free() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def plot(result: ValidationResult, path: Any) -> Any:
    """Scatter of symmetrised Monte Carlo KL against the vector estimate, one point per pair."""

    c = result.comparison
    pairs = result.pairs()
    note = (
        f"Pearson {c.pearson:.3f} [{c.pearson_ci[0]:.2f}, {c.pearson_ci[1]:.2f}]\n"
        f"Spearman {c.spearman:.3f} [{c.spearman_ci[0]:.2f}, {c.spearman_ci[1]:.2f}]\n"
        f"{result.prompts} prompts x {result.samples} sample(s), 95% bootstrap CIs"
    )
    return plots.scatter(
        path,
        [r["vector"] for r in pairs],
        [r["mc_sym"] for r in pairs],
        xlabel="vector estimate ||ξi − ξj||² / 2N  [nats per text]",
        ylabel="Monte Carlo KL, symmetrised  [nats per response]",
        title=f"KL validation on {result.textset}, {len(result.models)} models",
        labels=[f"{r['a'].split('/')[-1]}~{r['b'].split('/')[-1]}" for r in pairs],
        note=note,
    )
