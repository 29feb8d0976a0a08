"""Discovery: filters with the paper's defaults, every skip reason, lineage, incremental polls."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import pytest
from _sync_hub import start_hub

from atlas.hub import client, discovery
from atlas.hub.discovery import Candidate, Filters, decide, lineage, poll
from atlas.testing.demo_hub import EXPECTED

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)


def good(**changes) -> Candidate:
    """A candidate that passes every default filter."""
    fields = dict(
        repo_id="org/chat",
        sha="a" * 40,
        downloads=5000,
        tags=["transformers", "safetensors", "text-generation"],
        library_name="transformers",
        parameters={"BF16": 7_000_000_000},
        total_parameters=7_000_000_000,
        config={"model_type": "llama", "tokenizer_config": {"chat_template": "{{ x }}"}},
    )
    fields.update(changes)
    return Candidate(**fields)


# --- filters, by hand -------------------------------------------------------------------------


def test_a_good_candidate_is_queued() -> None:
    assert decide(good(), Filters()) == discovery.Decision("queued")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"library_name": "mlx", "tags": ["mlx"]}, "not-transformers"),
        ({"parameters": None, "total_parameters": None}, "no-safetensors"),
        ({"parameters": {"I32": 10**9, "F16": 10**8}}, "quantized"),
        (
            {
                "config": {
                    "quantization_config": {"quant_method": "gptq"},
                    "chat_template_jinja": "x",
                }
            },
            "quantized",
        ),
        ({"total_parameters": 70_000_000_001}, "too-large"),
        ({"downloads": 999}, "low-downloads"),
        ({"downloads": None}, "low-downloads"),
        ({"config": {"model_type": "llama"}, "tags": ["conversational"]}, "no-chat-template"),
        ({"gated": True}, "gated"),
    ],
)
def test_each_filter_names_its_reason(changes, reason) -> None:
    d = decide(good(**changes), Filters())
    assert (d.status, d.reason) == ("skipped", reason)
    assert d.detail


def test_filter_boundaries_and_settings() -> None:
    assert decide(good(downloads=1000), Filters()).status == "queued"  # >= 1000
    assert decide(good(total_parameters=70_000_000_000), Filters()).status == "queued"  # <= 70B
    assert decide(good(downloads=10), Filters(min_downloads=10)).status == "queued"
    assert decide(good(), Filters(max_params=10**9)).reason == "too-large"
    # transformers may be known from the tags alone
    assert decide(good(library_name=None), Filters()).status == "queued"
    # gated: passes only when the token has access
    assert decide(good(gated=True), Filters(), has_access=lambda c: True).status == "queued"
    assert decide(good(gated=True), Filters(allow_gated=False),
                  has_access=lambda c: True).reason == "gated"  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [
        {"tokenizer_config": {"chat_template": "{{ m }}"}},
        {"chat_template_jinja": "{{ m }}"},
        {"processor_config": {"chat_template": "{{ m }}"}},
        {"tokenizer_config": {"chat_template": [{"name": "default", "template": "x"}]}},
    ],
)
def test_chat_template_places(config) -> None:
    assert good(config=config).has_chat_template


def test_lineage_from_base_models_and_tags() -> None:
    base = {"relation": "finetune", "models": [{"id": "meta/llama-3-8b"}]}
    tags = [
        "base_model:meta/llama-3-8b",
        "base_model:finetune:meta/llama-3-8b",
        "base_model:merge:mistral/m7b",
        "base_model:quantized:qwen/q2",
        "license:mit",
    ]
    assert lineage(base, tags) == ["meta/llama-3-8b", "mistral/m7b", "qwen/q2"]
    assert lineage(None, ["base_model:adapter:org/x"]) == ["org/x"]
    assert lineage(None, []) == []


# --- polls against the local Hub --------------------------------------------------------------


@pytest.fixture
def hub(tmp_path, zoo_models):
    hub = start_hub(tmp_path / "repos", zoo_models, page_size=4)
    yield hub
    hub.stop()


def _api(hub, token=None):
    return client.make_api(hub.endpoint, token)


def test_every_skip_reason_is_earned_and_recorded(store, hub) -> None:
    result = poll(store, _api(hub), Filters())
    assert result.full and result.complete and result.seen == len(EXPECTED)
    rows = {m.repo_id: m for m in store.models()}
    assert set(rows) == set(EXPECTED)
    for repo, (status, reason) in EXPECTED.items():
        row = rows[repo]
        if status == "skipped":
            assert (row.status, row.reason) == ("skipped", reason), repo
            assert row.detail
        else:  # the scorer decides these; discovery queues them
            assert (row.status, row.reason) == ("queued", None), repo
    assert set(result.skipped) == set(discovery.SKIP_REASONS)
    # metadata and lineage are recorded
    chat = rows["atlas-zoo/llama-chat-a"]
    assert chat.revision == hub.sha("atlas-zoo/llama-chat-a")
    assert chat.base_models == ["atlas-zoo/llama-base"]
    assert chat.downloads == 41_000 and chat.model_type == "llama"
    assert chat.architecture == "LlamaForCausalLM" and chat.has_chat_template
    assert rows["community/qwen-chat-a-awq"].base_models == ["atlas-zoo/qwen-chat-a"]
    assert rows["community/giant-72b"].num_parameters > 70 * 10**9
    assert rows["gated-org/qwen-chat-b-gated"].gated


def test_second_poll_reads_only_first_pages(store, hub) -> None:
    poll(store, _api(hub), Filters())
    first = hub.requests_to("/api/models")
    assert len(first) == 4 and sum("cursor" in r.query for r in first) == 3  # 15 models / 4
    assert first[0].query["sort"] == ["createdAt"] or first[0].query["sort"] == ["created_at"]
    assert set(first[0].query["expand"]) >= {"downloads", "safetensors", "config", "gated"}
    hub.clear_requests()
    second = poll(store, _api(hub), Filters())
    listing = hub.requests_to("/api/models")
    assert not second.full and second.complete
    assert len(listing) == 2 and not any("cursor" in r.query for r in listing)
    assert not second.new and not second.updated and not second.queued

    # a new model appears: still one page per listing, and it is found
    hub.add(_spec_copy(hub, "atlas-zoo/qwen-chat-a", "newcomer/qwen-chat-c", NOW))
    hub.clear_requests()
    third = poll(store, _api(hub), Filters())
    assert third.new == ["newcomer/qwen-chat-c"] and third.queued == ["newcomer/qwen-chat-c"]
    assert not any("cursor" in r.query for r in hub.requests_to("/api/models"))


def _spec_copy(hub, source, repo_id, when, **meta):
    from atlas.testing.hub import RepoSpec

    spec = hub._get("model", source).spec
    return RepoSpec(repo_id, spec.folder, downloads=meta.pop("downloads", 5000),
                    created_at=when, last_modified=when, **meta)  # fmt: skip


def test_updated_revision_is_noticed_and_keeps_scored_status(store, hub, tmp_path) -> None:
    poll(store, _api(hub), Filters())
    repo = "atlas-zoo/llama-chat-b"
    old = hub.sha(repo)
    store.set_status(repo, "scored")
    # The upstream repo gets a new commit (an edited card): a new sha, a newer lastModified.
    folder = tmp_path / "edited"
    shutil.copytree(hub._get("model", repo).spec.folder, folder)
    (folder / "README.md").write_text((folder / "README.md").read_text() + "\nUpdated.\n")
    new = hub.update(repo, folder=folder, last_modified=NOW)
    assert new != old
    hub.clear_requests()
    result = poll(store, _api(hub), Filters())
    assert result.updated == [repo] and not result.new
    row = store.model(repo)
    assert (row.status, row.revision) == ("scored", new)  # vectors stay, keyed by revision
    assert len(hub.requests_to("/api/models")) == 2
    # a skipped model whose new revision now passes is decided again
    fixed = tmp_path / "fixed"
    shutil.copytree(hub._get("model", "atlas-zoo/no-template").spec.folder, fixed)
    jinja = hub._get("model", "atlas-zoo/llama-chat-a").spec.folder / "chat_template.jinja"
    shutil.copy(jinja, fixed / "chat_template.jinja")
    hub.update("atlas-zoo/no-template", folder=fixed, last_modified=NOW + timedelta(hours=1))
    again = poll(store, _api(hub), Filters())
    assert again.updated == ["atlas-zoo/no-template"]
    assert store.model("atlas-zoo/no-template").status == "queued"


def test_changed_filters_force_a_full_poll(store, hub) -> None:
    poll(store, _api(hub), Filters())
    hub.clear_requests()
    result = poll(store, _api(hub), Filters(min_downloads=10))
    assert result.full and len(hub.requests_to("/api/models")) == 4
    assert store.model("community/llama-chat-a-unpopular").status == "queued"


def test_dry_run_writes_nothing(store, hub) -> None:
    result = poll(store, _api(hub), Filters(), dry_run=True)
    assert result.seen == len(EXPECTED) and len(result.queued) == 8
    assert store.models() == [] and store.get_state(discovery.STATE_KEY) == {}


def test_hub_prefilter_lets_the_hub_drop_large_models(store, hub) -> None:
    poll(store, _api(hub), Filters(hub_prefilter=True))
    assert hub.requests_to("/api/models")[0].query["num_parameters"] == ["max:70000000000"]
    seen = {m.repo_id for m in store.models()}
    assert "community/giant-72b" not in seen and "atlas-zoo/llama-base" in seen


def test_gated_repo_needs_a_token_with_access(tmp_path, zoo_models, store) -> None:
    only = ["gated-org/qwen-chat-b-gated", "atlas-zoo/qwen-base"]
    hub = start_hub(tmp_path / "repos", zoo_models, only, token="hf_secret_right")
    try:
        poll(store, _api(hub, "hf_wrong_token"), Filters())
        assert store.model("gated-org/qwen-chat-b-gated").reason == "gated"
        heads = hub.requests_to("*/config.json", "HEAD")
        assert heads and heads[-1].status in (401, 403)
        result = poll(store, _api(hub, "hf_secret_right"), Filters(), full=True)
        assert result.queued == ["gated-org/qwen-chat-b-gated"]
        assert store.model("gated-org/qwen-chat-b-gated").status == "queued"
    finally:
        hub.stop()
    # the token is never stored
    dump = repr([vars(m) for m in store.models()]) + repr(store.get_state(discovery.STATE_KEY))
    assert "hf_secret" not in dump


def test_endpoint_and_token_are_read_at_call_time(monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    api = client.make_api()
    assert api.endpoint == "http://127.0.0.1:9" and api.token == "hf_from_env"
