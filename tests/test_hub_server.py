"""The local Hub answers real huggingface_hub (and transformers) calls like the Hub does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.numpy import save_file

from atlas.testing.hub import LocalHub, RepoSpec, discover

TOKEN = "hf_local_secret"
TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
DAY0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def make_repo(
    folder: Path,
    *,
    params: int = 64,
    packed: int = 0,
    base_model: str | None = None,
    jinja: bool = False,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Write a tiny model repo: safetensors weights, config, tokenizer config, card."""
    folder.mkdir(parents=True)
    tensors = {"embed.weight": np.zeros((params // 8, 8), dtype=np.float16)}
    if packed:
        tensors["layer.qweight"] = np.zeros((packed,), dtype=np.int32)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 8}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer: dict[str, Any] = {"bos_token": "<s>", "eos_token": {"content": "</s>"}}
    if jinja:
        (folder / "chat_template.jinja").write_text(TEMPLATE)
    else:
        tokenizer["chat_template"] = TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    front = f"base_model: {base_model}\n" if base_model else ""
    (folder / "README.md").write_text(f"---\n{front}license: mit\ntags:\n- chat\n---\n# Model\n")
    for name, data in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def start_hub() -> Iterator[Callable[..., LocalHub]]:
    """Factory that starts LocalHubs and stops them after the test."""
    hubs: list[LocalHub] = []

    def start(repos: list[RepoSpec], **options: Any) -> LocalHub:
        hub = LocalHub(repos, **options)
        hub.start()
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        hub.stop()


@pytest.fixture
def hub(tmp_path: Path, start_hub: Callable[..., LocalHub]) -> LocalHub:
    """A hub with a base model, a fine-tune, a gated model and a dataset."""
    repos = tmp_path / "repos"
    data = tmp_path / "data" / "texts"
    (data / "data").mkdir(parents=True)
    (data / "data" / "train.jsonl").write_text('{"text": "hello"}\n')
    (data / "README.md").write_text("---\nlicense: cc-by-4.0\ntags: [pairs]\n---\n")
    blob = bytes(range(256)) * 80  # 20 KB, enough to cut a download in the middle
    return start_hub(
        [
            RepoSpec(
                "org/base", make_repo(repos / "base", params=256), downloads=50, created_at=DAY0
            ),
            RepoSpec(
                "org/chat",
                make_repo(
                    repos / "chat",
                    base_model="org/base",
                    jinja=True,
                    extra={"blob.bin": blob, "sub/notes.txt": b"n"},
                ),
                downloads=7,
                likes=3,
                created_at=DAY0 + timedelta(days=1),
            ),
            RepoSpec(
                "org/gated",
                make_repo(repos / "gated"),
                gated="manual",
                created_at=DAY0 + timedelta(days=2),
            ),
            RepoSpec("org/texts", data, repo_type="dataset", downloads=9),
        ],
        token=TOKEN,
    )


def retry(call: Callable[[], Any], attempts: int = 3) -> Any:
    """Call again on HTTP errors, as callers of the non-retrying client functions must."""
    for attempt in range(attempts):
        try:
            return call()
        except HfHubHTTPError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# -- listing -------------------------------------------------------------------------------------


def test_list_models_follows_cursor_pages(tmp_path: Path, start_hub: Callable) -> None:
    specs = [
        RepoSpec(f"org/m{i}", make_repo(tmp_path / f"m{i}"), created_at=DAY0 + timedelta(days=i))
        for i in range(7)
    ]
    hub = start_hub(specs, page_size=3)
    api = HfApi(endpoint=hub.endpoint)

    expand = ["createdAt", "safetensors", "config", "tags"]
    newest = list(
        api.list_models(filter="text-generation", sort="created_at", limit=5, expand=expand)
    )

    assert [m.id for m in newest] == ["org/m6", "org/m5", "org/m4", "org/m3", "org/m2"]
    assert newest[0].created_at == DAY0 + timedelta(days=6)
    assert newest[0].safetensors.total == 64
    assert newest[0].config["tokenizer_config"]["chat_template"] == TEMPLATE
    assert newest[0].downloads is None and newest[0].sha is None  # only expanded fields
    pages = hub.requests_to("/api/models")
    assert len(pages) == 2
    assert pages[0].query["expand"] == expand and "cursor" not in pages[0].query
    assert "cursor" in pages[1].query and pages[1].query["filter"] == ["text-generation"]

    hub.clear_requests()
    assert [m.id for m in api.list_models(sort="created_at")][-1] == "org/m0"
    assert len(hub.requests_to("/api/models")) == 3


def test_list_models_filters(tmp_path: Path, start_hub: Callable) -> None:
    hub = start_hub(
        [
            RepoSpec("org/small", make_repo(tmp_path / "s", params=64), downloads=1),
            RepoSpec("org/large", make_repo(tmp_path / "l", params=4096), downloads=3),
            RepoSpec("org/packed", make_repo(tmp_path / "p", params=64, packed=100), downloads=2),
            RepoSpec("other/clf", make_repo(tmp_path / "c"), pipeline_tag="text-classification"),
            RepoSpec("org/hidden", make_repo(tmp_path / "h"), private=True),
        ],
        token=TOKEN,
    )
    api = HfApi(endpoint=hub.endpoint, token=False)

    def ids(**query: Any) -> list[str]:
        return [m.id for m in api.list_models(**query)]

    assert ids(num_parameters="min:100,max:1K") == ["org/packed"]
    assert ids(num_parameters="max:70B", sort="downloads") == [
        "org/large",
        "org/packed",
        "org/small",
        "other/clf",
    ]
    assert ids(filter="text-generation", author="org", sort="downloads")[0] == "org/large"
    assert ids(pipeline_tag="text-classification") == ["other/clf"]
    assert ids(search="PACK") == ["org/packed"]
    assert "org/hidden" not in ids()
    assert "org/hidden" in [m.id for m in HfApi(endpoint=hub.endpoint, token=TOKEN).list_models()]
    packed = next(iter(api.list_models(search="packed", expand=["safetensors"])))
    assert packed.safetensors.parameters == {"F16": 64, "I32": 100}  # packed ints under-count
    full = next(iter(api.list_models(search="small", full=True, cardData=True, fetch_config=True)))
    assert full.sha == hub.sha("org/small") and full.card_data.license == "mit"
    assert [s.rfilename for s in full.siblings] == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
    ]


# -- repo info, files and trees ------------------------------------------------------------------


def test_model_info_expand_and_full(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.endpoint)

    info = api.model_info("org/chat", expand=["baseModels", "cardData", "config", "tags", "sha"])
    assert info.sha == hub.sha("org/chat") and info.downloads is None
    assert info.base_models == {"relation": "finetune", "models": [{"id": "org/base"}]}
    assert {"base_model:org/base", "base_model:finetune:org/base"} <= set(info.tags)
    assert {"conversational", "license:mit", "chat", "safetensors"} <= set(info.tags)
    assert info.config["chat_template_jinja"] == TEMPLATE
    assert info.config["tokenizer_config"] == {"bos_token": "<s>", "eos_token": "</s>"}
    assert info.card_data.base_model == "org/base"

    full = api.model_info("org/chat", files_metadata=True, securityStatus=True)
    assert full.downloads == 7 and full.likes == 3 and full.pipeline_tag == "text-generation"
    assert full.security_repo_status["scansDone"] is True
    sizes = {s.rfilename: s for s in full.siblings}
    assert sizes["blob.bin"].size == 20480 and sizes["blob.bin"].lfs.size == 20480
    assert sizes["config.json"].lfs is None and sizes["config.json"].blob_id
    assert api.model_info("org/base", expand=["childrenModelCount"]).children_model_count == 1
    assert api.model_info("org/chat", revision=full.sha).sha == full.sha


def test_get_safetensors_metadata_reads_ranges(hub: LocalHub) -> None:
    meta = HfApi(endpoint=hub.endpoint).get_safetensors_metadata("org/base")

    assert meta.parameter_count == {"F16": 256}
    ranged = [r for r in hub.requests_to("*/model.safetensors", "GET") if "range" in r.headers]
    assert ranged and ranged[0].status == 206


def test_snapshot_download_with_patterns(hub: LocalHub, tmp_path: Path) -> None:
    patterns = ["*.safetensors", "*.json", "*.jinja", "tokenizer*"]
    folder = Path(
        snapshot_download(
            "org/chat", endpoint=hub.endpoint, allow_patterns=patterns, cache_dir=tmp_path / "cache"
        )
    )

    assert sorted(p.name for p in folder.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
    ]
    assert folder.name == hub.sha("org/chat")
    assert hub.requests_to("/api/models/org/chat/tree/*")


def test_tree_listing(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.endpoint)

    top = {e.path for e in api.list_repo_tree("org/chat")}
    assert "sub" in top and "sub/notes.txt" not in top
    assert [e.path for e in api.list_repo_tree("org/chat", path_in_repo="sub")] == ["sub/notes.txt"]
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree("org/chat", path_in_repo="additional_chat_templates"))


def test_dataset_repo(hub: LocalHub, tmp_path: Path) -> None:
    path = hf_hub_download(
        "org/texts",
        "data/train.jsonl",
        repo_type="dataset",
        endpoint=hub.endpoint,
        cache_dir=tmp_path / "cache",
    )
    api = HfApi(endpoint=hub.endpoint)

    assert Path(path).read_text() == '{"text": "hello"}\n'
    assert [d.id for d in api.list_datasets(search="texts")] == ["org/texts"]
    info = api.dataset_info("org/texts")
    assert info.downloads == 9 and "license:cc-by-4.0" in info.tags
    assert [s.rfilename for s in info.siblings] == ["README.md", "data/train.jsonl"]


def test_errors_map_to_client_exceptions(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint)
    cache = tmp_path / "cache"

    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/chat", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("org/chat", "nope.json", endpoint=hub.endpoint, cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json", endpoint=hub.endpoint, cache_dir=cache)
    assert not api.file_exists("org/chat", "additional_chat_templates/x.jinja")


def test_gated_repo_needs_the_token(hub: LocalHub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    assert HfApi(endpoint=hub.endpoint, token=False).model_info("org/gated").gated == "manual"
    with pytest.raises(GatedRepoError):
        hf_hub_download(
            "org/gated", "config.json", endpoint=hub.endpoint, cache_dir=cache, token=False
        )
    with pytest.raises(GatedRepoError):
        hf_hub_download(
            "org/gated", "config.json", endpoint=hub.endpoint, cache_dir=cache, token="hf_wrong"
        )
    path = hf_hub_download(
        "org/gated", "config.json", endpoint=hub.endpoint, cache_dir=cache, token=TOKEN
    )
    assert json.loads(Path(path).read_text())["model_type"] == "llama"
    assert HfApi(endpoint=hub.endpoint).whoami(token=TOKEN)["name"] == hub.user
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=hub.endpoint).whoami(token="hf_wrong")


def test_update_makes_a_new_revision(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint)
    before = api.model_info("org/base")
    folder = tmp_path / "repos" / "base"

    assert hub.update("org/base", downloads=99) == before.sha  # metadata only: same commit
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    sha = hub.update("org/base")
    after = api.model_info("org/base")

    assert sha != before.sha and after.sha == sha and len(sha) == 40
    assert after.downloads == 99 and after.last_modified > before.last_modified
    assert after.config["model_type"] == "qwen2"
    cache = tmp_path / "cache"
    path = hf_hub_download("org/base", "config.json", endpoint=hub.endpoint, cache_dir=cache)
    assert "qwen2" in Path(path).read_text()
    # The old commit stays addressable for files that did not change.
    hf_hub_download(
        "org/base", "model.safetensors", revision=before.sha, endpoint=hub.endpoint, cache_dir=cache
    )
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            "org/base", "config.json", revision=before.sha, endpoint=hub.endpoint, cache_dir=cache
        )


# -- faults --------------------------------------------------------------------------------------


def test_list_models_retries_server_errors(hub: LocalHub) -> None:
    hub.faults.add("/api/models", 503)

    assert len(list(HfApi(endpoint=hub.endpoint).list_models())) == 3
    assert [r.status for r in hub.requests_to("/api/models")] == [503, 200]
    assert hub.faults.pending == 0


def test_model_info_500_needs_a_caller_retry(hub: LocalHub) -> None:
    hub.faults.add("/api/models/org/chat", "500")
    api = HfApi(endpoint=hub.endpoint)

    with pytest.raises(HfHubHTTPError):
        api.model_info("org/chat")
    assert api.model_info("org/chat").id == "org/chat"


def test_head_502_is_retried_by_the_client(hub: LocalHub, tmp_path: Path) -> None:
    hub.faults.add("*/resolve/*/config.json", "502", method="HEAD")

    hf_hub_download("org/chat", "config.json", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert [r.status for r in hub.requests_to("*/config.json", "HEAD")] == [502, 200]


def test_get_500_is_not_retried_by_the_client(hub: LocalHub, tmp_path: Path) -> None:
    hub.faults.add("*/resolve/*/config.json", "500", method="GET")

    def download() -> str:
        return hf_hub_download("org/chat", "config.json", endpoint=hub.endpoint, cache_dir=tmp_path)

    assert Path(retry(download)).exists()
    assert [r.status for r in hub.requests_to("*/config.json", "GET")] == [500, 200]


def test_get_429_is_retried_by_the_client(hub: LocalHub, tmp_path: Path) -> None:
    hub.faults.add("*/resolve/*/config.json", 429, method="GET")

    hf_hub_download("org/chat", "config.json", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert [r.status for r in hub.requests_to("*/config.json", "GET")] == [429, 200]


def test_slow_head_times_out_then_succeeds(hub: LocalHub, tmp_path: Path) -> None:
    hub.faults.add("*/resolve/*/config.json", "slow", method="HEAD", delay=2.0)

    hf_hub_download(
        "org/chat", "config.json", endpoint=hub.endpoint, cache_dir=tmp_path, etag_timeout=0.2
    )
    assert len(hub.requests_to("*/config.json", "HEAD")) == 2


def test_truncated_download_resumes_with_range(
    hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # keep the bytes read so far
    hub.faults.add("*/resolve/*/blob.bin", "truncate", method="GET", after_bytes=5000)

    path = hf_hub_download("org/chat", "blob.bin", endpoint=hub.endpoint, cache_dir=tmp_path)

    assert Path(path).read_bytes() == bytes(range(256)) * 80
    first, second = hub.requests_to("*/blob.bin", "GET")
    assert "range" not in first.headers
    assert second.headers["range"] == "bytes=4096-" and second.status == 206


def test_dropped_connection_is_retried(hub: LocalHub) -> None:
    hub.faults.add("/api/models", "drop")

    assert len(list(HfApi(endpoint=hub.endpoint).list_models())) == 3


# -- transformers, the command line, the port ----------------------------------------------------


def test_transformers_loads_through_the_endpoint(tmp_path: Path, start_hub: Callable) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = make_repo(tmp_path / "tiny")
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world", "user", ":"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "chat_template": TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    hub = start_hub([RepoSpec("org/tiny", folder)])
    code = (
        "from transformers import AutoConfig, AutoTokenizer\n"
        "print(AutoConfig.from_pretrained('org/tiny').model_type)\n"
        "t = AutoTokenizer.from_pretrained('org/tiny')\n"
        "print(t('hello world')['input_ids'])\n"
        "print(t.apply_chat_template([{'role': 'user', 'content': 'hello'}], tokenize=False))\n"
    )
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:3] == ["llama", "[3, 4]", "user : hello "]
    assert hub.requests_to("*/additional_chat_templates")[0].status == 404


def test_cli_serves_a_folder_of_repos(tmp_path: Path) -> None:
    make_repo(tmp_path / "models" / "org" / "one")
    meta = {"downloads": 5, "created_at": "2024-05-01T00:00:00Z"}
    (tmp_path / "models" / "org" / "one" / ".hub-meta.json").write_text(json.dumps(meta))
    assert discover(tmp_path / "models")[0].downloads == 5
    command = [
        sys.executable,
        "-m",
        "atlas.testing.hub",
        "--models",
        str(tmp_path / "models"),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        with urllib.request.urlopen(f"{url}/api/models?expand=downloads", timeout=5) as answer:
            assert json.load(answer)[0]["downloads"] == 5
        info = HfApi(endpoint=url).model_info("org/one")
        assert info.created_at == datetime(2024, 5, 1, tzinfo=timezone.utc)
        assert ".hub-meta.json" not in [s.rfilename for s in info.siblings]
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_stop_releases_the_port(tmp_path: Path) -> None:
    with LocalHub([RepoSpec("org/a", make_repo(tmp_path / "a"))]) as local:
        port = int(local.endpoint.rsplit(":", 1)[1])
        assert HfApi(endpoint=local.endpoint).model_info("org/a").id == "org/a"
    again = LocalHub()
    assert again.start(port) == f"http://127.0.0.1:{port}"
    again.stop()
