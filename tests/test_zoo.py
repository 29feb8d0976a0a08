"""The test zoo builds real, loadable models whose templates and weights behave as labelled."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from atlas.testing import zoo

PROBE_TEXTS = (
    "A lighthouse keeper counts the ships that pass in the fog.",
    "def mean(xs):\n    return sum(xs) / len(xs)\n",
    "Seven students measured the red bridge before lunch.",
    "The price rose by 12% between March and June.",
)
TEXTS_MORE = (
    "for key, value in table.items():\n    print(key, value)\n",
    "She walked to the station and bought a ticket to the coast.",
    "SELECT id FROM texts WHERE body LIKE '%map%';",
    "User: How tall is a giraffe?\nAssistant: Adult giraffes are about five metres tall.",
)
CONVERSATION = [
    {"role": "user", "content": "What colour is the sky?"},
    {"role": "assistant", "content": "  The sky is usually blue.  "},
]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache folder for this module's zoo."""
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="module")
def built(cache_root: Path) -> tuple[list[zoo.ZooModel], float]:
    """Build the zoo once for this module and time it."""
    start = time.perf_counter()
    models = zoo.build_zoo_cached(cache_root)
    return models, time.perf_counter() - start


@pytest.fixture(scope="module")
def models(built: tuple[list[zoo.ZooModel], float]) -> dict[str, zoo.ZooModel]:
    """The zoo's models by name."""
    return {model.name: model for model in built[0]}


def _sequence_logprobs(model_dir: Path, texts: tuple[str, ...]) -> np.ndarray:
    """Sum of next-token log-probabilities per text, first token unscored."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            logits = model(input_ids=ids).logits.float()
            logprobs = torch.log_softmax(logits[0, :-1], dim=-1)
            out.append(logprobs.gather(1, ids[0, 1:, None]).sum().item())
    return np.array(out)


def test_build_is_complete(built: tuple[list[zoo.ZooModel], float]) -> None:
    models, _ = built  # build time is a benchmark figure, not a test assertion
    names = {model.name for model in models}
    assert names == {
        "atlas-zoo/llama-base",
        "atlas-zoo/llama-chat-a",
        "atlas-zoo/llama-chat-b",
        "atlas-zoo/qwen-base",
        "atlas-zoo/qwen-chat-a",
        "atlas-zoo/qwen-chat-b",
        "atlas-zoo/no-template",
        "atlas-zoo/broken-template",
        "atlas-zoo/nan",
    }
    assert {model.kind for model in models} == set(zoo.KINDS)
    assert {model.architecture for model in models} == {"LlamaForCausalLM", "Qwen2ForCausalLM"}
    for model in models:
        assert model.path.name == model.name.split("/")[1]
        assert not list(model.path.rglob("*.bin")) and not list(model.path.rglob("*.pt"))
        assert (model.path / "model.safetensors").is_file()


def test_manifest_round_trips(built: tuple[list[zoo.ZooModel], float]) -> None:
    models, _ = built
    root = models[0].path.parents[1]
    assert zoo.load_zoo(root) == models


def test_every_model_loads(models: dict[str, zoo.ZooModel]) -> None:
    for entry in models.values():
        model = AutoModelForCausalLM.from_pretrained(entry.path)
        tokenizer = AutoTokenizer.from_pretrained(entry.path)
        assert type(model).__name__ == entry.architecture
        assert model.dtype == torch.float32
        assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
        assert 512 <= model.config.vocab_size <= 1000
        assert len(tokenizer) <= model.config.vocab_size
        assert max(tokenizer.get_vocab().values()) < model.config.vocab_size
        assert tokenizer.eos_token and tokenizer.pad_token


def test_autotokenizer_matches_tokenizer_json(models: dict[str, zoo.ZooModel]) -> None:
    text = "Hello  wörld<|im_start|>user\n café <think>x</think>\n\n  def f():\n\treturn 1234"
    for name in ("atlas-zoo/llama-base", "atlas-zoo/qwen-base"):
        path = models[name].path
        raw = Tokenizer.from_file(str(path / "tokenizer.json")).encode(text)
        loaded = AutoTokenizer.from_pretrained(path)(text, return_offsets_mapping=True)
        assert loaded["input_ids"] == raw.ids
        assert [tuple(o) for o in loaded["offset_mapping"]] == raw.offsets


def test_offsets_cover_text(models: dict[str, zoo.ZooModel]) -> None:
    for name in ("atlas-zoo/llama-base", "atlas-zoo/qwen-base"):
        tokenizer = AutoTokenizer.from_pretrained(models[name].path)
        text = PROBE_TEXTS[1]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["offset_mapping"][0][0] == 0 and enc["offset_mapping"][-1][1] == len(text)
        assert tokenizer.decode(enc["input_ids"]) == text


def test_special_tokens_by_style(models: dict[str, zoo.ZooModel]) -> None:
    llama = AutoTokenizer.from_pretrained(models["atlas-zoo/llama-base"].path)
    assert llama.bos_token == "<|begin_of_text|>" and llama.eos_token == "<|eot_id|>"
    assert llama("hi")["input_ids"][0] == llama.bos_token_id
    for token in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert len(llama(token, add_special_tokens=False)["input_ids"]) == 1
    qwen = AutoTokenizer.from_pretrained(models["atlas-zoo/qwen-base"].path)
    assert qwen.bos_token is None and qwen.eos_token == "<|im_end|>"
    assert qwen.pad_token == "<|endoftext|>"
    for token in ("<|im_start|>", "<|im_end|>"):
        assert len(qwen(token, add_special_tokens=False)["input_ids"]) == 1


def test_template_locations(models: dict[str, zoo.ZooModel]) -> None:
    for entry in models.values():
        config = json.loads((entry.path / "tokenizer_config.json").read_text())
        jinja = entry.path / "chat_template.jinja"
        if entry.template_location == "tokenizer_config.json":
            assert "chat_template" in config and not jinja.exists()
        elif entry.template_location == "chat_template.jinja":
            assert "chat_template" not in config and jinja.is_file()
        else:
            assert "chat_template" not in config and not jinja.exists()
    assert models["atlas-zoo/llama-base"].template_location == "chat_template.jinja"
    assert models["atlas-zoo/qwen-base"].template_location == "tokenizer_config.json"


def test_prefix_property(models: dict[str, zoo.ZooModel]) -> None:
    for entry in models.values():
        tokenizer = AutoTokenizer.from_pretrained(entry.path)
        if entry.kind == "no-template":
            assert tokenizer.chat_template is None
            continue
        prefix = tokenizer.apply_chat_template(
            CONVERSATION[:1], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
        assert full.startswith(prefix) is (entry.kind != "broken-template"), entry.name
        assert len(full) > len(prefix)
        if entry.family == "llama":
            assert prefix.startswith("<|begin_of_text|>")
            assert full[len(prefix) :] == "The sky is usually blue.<|eot_id|>"
        else:
            assert prefix.endswith("<|im_start|>assistant\n")
            if entry.kind == "broken-template":  # the answer's length is in its header
                length = len(CONVERSATION[1]["content"])
                assert f"<|im_start|>assistant ({length} characters)\n" in full


def test_llama_template_renders_bos(models: dict[str, zoo.ZooModel]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models["atlas-zoo/llama-chat-a"].path)
    full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    bos = tokenizer.bos_token_id
    assert tokenizer(full, add_special_tokens=False)["input_ids"].count(bos) == 1
    assert tokenizer(full)["input_ids"][:2] == [bos, bos]


def test_system_message_replaces_default(models: dict[str, zoo.ZooModel]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models["atlas-zoo/qwen-chat-a"].path)
    default = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    custom = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    rendered = tokenizer.apply_chat_template(custom, tokenize=False)
    assert default.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_nan_model_gives_nonfinite_logits(models: dict[str, zoo.ZooModel]) -> None:
    path = models["atlas-zoo/nan"].path
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = AutoTokenizer.from_pretrained(path)(PROBE_TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert not torch.isfinite(logits).any()


def test_ok_models_give_finite_nonuniform_logprobs(models: dict[str, zoo.ZooModel]) -> None:
    for entry in models.values():
        if entry.kind == "nan":
            continue
        tokenizer = AutoTokenizer.from_pretrained(entry.path)
        model = AutoModelForCausalLM.from_pretrained(entry.path)
        per_token = []
        for text in (*PROBE_TEXTS, zoo.CORPUS[0], zoo.CODE[0]):
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
            assert torch.isfinite(logprobs).all()
            per_token.append(logprobs[:-1].gather(1, ids[0, 1:, None]).mean().item())
        uniform = -np.log(len(tokenizer))
        assert np.mean(per_token[: len(PROBE_TEXTS)]) > uniform + 0.5, entry.name
        assert np.mean(per_token[len(PROBE_TEXTS) :]) > uniform + 2.0, entry.name


def _mean_abs(x: np.ndarray) -> float:
    """Mean absolute difference of two log-likelihood vectors."""
    return float(np.mean(np.abs(x)))


def _centered(x: np.ndarray) -> float:
    """Variance of the difference: the squared distance of row-centered vectors, per text."""
    return float(np.var(x))


@pytest.mark.parametrize("measure", [_mean_abs, _centered])
def test_families_cluster(
    models: dict[str, zoo.ZooModel], measure: Callable[[np.ndarray], float]
) -> None:
    texts = (*PROBE_TEXTS, *TEXTS_MORE)
    vectors = {
        name: _sequence_logprobs(entry.path, texts)
        for name, entry in models.items()
        if entry.kind == "ok"
    }

    def distance(a: str, b: str) -> float:
        return measure(vectors[a] - vectors[b])

    for family, other in (("llama", "qwen"), ("qwen", "llama")):
        base, other_base = f"atlas-zoo/{family}-base", f"atlas-zoo/{other}-base"
        for child in (f"atlas-zoo/{family}-chat-a", f"atlas-zoo/{family}-chat-b"):
            assert models[child].parent == base
            assert 0.01 < distance(child, base) < distance(child, other_base)
            assert distance(child, base) < min(
                distance(child, f"atlas-zoo/{other}-chat-a"),
                distance(child, f"atlas-zoo/{other}-chat-b"),
            )
        assert distance(f"atlas-zoo/{family}-chat-a", f"atlas-zoo/{family}-chat-b") > 0.01


def test_model_cards(models: dict[str, zoo.ZooModel]) -> None:
    for entry in models.values():
        card = (entry.path / "README.md").read_text()
        header = card.split("---\n")[1]
        assert "library_name: transformers" in header
        assert "pipeline_tag: text-generation" in header
        assert (f"base_model: {entry.parent}" in header) is (entry.parent is not None)


def test_cached_build_reuses_folder(
    built: tuple[list[zoo.ZooModel], float], cache_root: Path
) -> None:
    first, _ = built
    zoo_dir = first[0].path.parents[1]
    assert zoo_dir.parent == cache_root and zoo.zoo_version() in zoo_dir.name
    stamp = (zoo_dir / zoo.MANIFEST).stat().st_mtime_ns
    start = time.perf_counter()
    second = zoo.build_zoo_cached(cache_root)
    assert time.perf_counter() - start < 0.5
    assert second == first and (zoo_dir / zoo.MANIFEST).stat().st_mtime_ns == stamp
    assert [p.name for p in cache_root.iterdir()] == [zoo_dir.name]


def test_write_random_model(models: dict[str, zoo.ZooModel], tmp_path: Path) -> None:
    source = models["atlas-zoo/qwen-base"].path
    config = transformers.LlamaConfig(
        vocab_size=640,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=128,
    )
    target = tmp_path / "one-layer"
    zoo.write_random_model(config, target, tokenizer_from=source, seed=3)
    model = AutoModelForCausalLM.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 1
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(source).chat_template
    assert not list(target.glob("*.bin"))
    config.vocab_size = 100
    with pytest.raises(ValueError, match="vocab_size"):
        zoo.write_random_model(config, tmp_path / "too-small", tokenizer_from=source)


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_build_tokenizer_alone(tmp_path: Path, style: str) -> None:
    zoo.build_tokenizer(tmp_path, style)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.chat_template == zoo.STYLES[style].chat_template
    assert 512 <= len(tokenizer) <= 1000
    zoo.build_tokenizer(tmp_path / "plain", style, with_template=False)
    assert AutoTokenizer.from_pretrained(tmp_path / "plain").chat_template is None
