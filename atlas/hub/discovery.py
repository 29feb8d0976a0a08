"""Hub discovery: list text-generation models, apply the filters, record every decision.

A poll walks `list_models` sorted by creation date, newest first, and stops at the first model
that is older than the watermark and already known with the same revision; a second, equally
cheap walk sorted by last modification catches new revisions of older models. The watermark
(newest createdAt and lastModified seen) is stored with `Store.set_state("hub", ...)` only after
a poll completes, so an interrupted poll is simply redone.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from atlas.errors import AtlasError, HubError
from atlas.hub import client
from atlas.store import Store, queries

STATE_KEY = "hub"
PIPELINE_TAG = "text-generation"
DEFAULT_MIN_DOWNLOADS = 1000
DEFAULT_MAX_PARAMS = 70_000_000_000
EXPAND = [
    "author", "downloads", "likes", "createdAt", "lastModified", "sha", "tags", "gated",
    "safetensors", "config", "library_name", "baseModels", "pipeline_tag",
]  # fmt: skip
PACKED_DTYPES = frozenset({"I32", "U32"})
LINEAGE_RELATIONS = ("finetune", "adapter", "quantized", "merge")
# Statuses whose decision a poll may revisit; the others belong to the queue or are final.
UNDECIDED = ("discovered", "skipped")
BATCH = 500  # decisions written per transaction
SKIP_REASONS = (
    "not-transformers", "no-safetensors", "quantized", "too-large", "low-downloads",
    "no-chat-template", "gated",
)  # fmt: skip
INVALID_ID = "invalid-id"  # a listed id huggingface_hub would refuse: recorded, never queued
MAX_STORED_ID = 256  # the store's column width for repo ids


def invalid_id(repo_id: Any) -> str | None:
    """Why huggingface_hub would refuse this repo id, or None when it is a valid one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        return "empty repo id"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        text = " ".join(str(exc).split())
        return text if len(text) <= 300 else text[:299] + "…"
    return None if len(repo_id) <= MAX_STORED_ID else f"repo id of {len(repo_id)} characters"


def storable_id(repo_id: str) -> str:
    """The key a listed id is recorded under: itself, or for an over-long one a stable digest."""
    if len(repo_id) <= MAX_STORED_ID:
        return repo_id
    import hashlib

    digest = hashlib.sha256(repo_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{repo_id[: MAX_STORED_ID - 18]}…{digest}"


@dataclass(frozen=True)
class Filters:
    """Which Hub models are worth scoring; every default is the paper's setting."""

    min_downloads: int = DEFAULT_MIN_DOWNLOADS
    max_params: int = DEFAULT_MAX_PARAMS
    require_chat_template: bool = True
    require_safetensors: bool = True
    library: str | None = "transformers"
    skip_quantized: bool = True
    allow_gated: bool = True  # only when the token has access; without a token gated is skipped
    hub_prefilter: bool = False  # pass num_parameters="max:..." to the Hub (unrecorded drops)

    def fingerprint(self) -> dict[str, Any]:
        """The filter values, stored with the watermark: changing them forces a full poll."""
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """A filter verdict: `queued`, or `skipped` with a reason and a human detail."""

    status: str
    reason: str | None = None
    detail: str | None = None


@dataclass
class Candidate:
    """What one listing entry says about a model, in the shape the filters need."""

    repo_id: str
    sha: str | None
    downloads: int | None = None
    likes: int | None = None
    created_at: datetime | None = None
    last_modified: datetime | None = None
    tags: list[str] = field(default_factory=list)
    gated: bool = False
    library_name: str | None = None
    pipeline_tag: str | None = None
    parameters: dict[str, int] | None = None
    total_parameters: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    base_models: list[str] = field(default_factory=list)
    listed_id: str = ""  # the id as listed (repo_id may be shortened to be stored)

    def __post_init__(self) -> None:
        self.listed_id = self.listed_id or str(self.repo_id or "")

    @classmethod
    def from_info(cls, info: Any) -> Candidate:
        """Build from a `huggingface_hub.ModelInfo` fetched with `expand=EXPAND`."""
        st = getattr(info, "safetensors", None)
        tags = list(getattr(info, "tags", None) or [])
        return cls(
            repo_id=info.id,
            sha=getattr(info, "sha", None),
            downloads=getattr(info, "downloads", None),
            likes=getattr(info, "likes", None),
            created_at=_aware(getattr(info, "created_at", None)),
            last_modified=_aware(getattr(info, "last_modified", None)),
            tags=tags,
            gated=bool(getattr(info, "gated", False)),
            library_name=getattr(info, "library_name", None),
            pipeline_tag=getattr(info, "pipeline_tag", None),
            parameters=dict(st.parameters) if st is not None and st.parameters else None,
            total_parameters=int(st.total) if st is not None and st.total is not None else None,
            config=dict(getattr(info, "config", None) or {}),
            base_models=lineage(getattr(info, "base_models", None), tags),
        )

    @property
    def has_chat_template(self) -> bool:
        """The Hub's own test: a template in tokenizer_config, a processor, or a .jinja file."""
        cfg = self.config
        tokenizer = cfg.get("tokenizer_config") or {}
        processor = cfg.get("processor_config") or {}
        return bool(
            (isinstance(tokenizer, dict) and tokenizer.get("chat_template"))
            or (isinstance(processor, dict) and processor.get("chat_template"))
            or cfg.get("chat_template_jinja")
        )

    @property
    def quantized(self) -> str | None:
        """Why the weights are packed/quantised (their parameter count is unreliable), or None."""
        packed = sorted(set(self.parameters or {}) & PACKED_DTYPES)
        if packed:
            return f"packed {'/'.join(packed)} tensors in safetensors"
        qc = self.config.get("quantization_config")
        if qc:
            method = qc.get("quant_method", "unknown") if isinstance(qc, dict) else "unknown"
            return f"quantization_config ({method})"
        return None

    @property
    def is_transformers(self) -> bool:
        return self.library_name == "transformers" or (
            self.library_name is None and "transformers" in self.tags
        )

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return str(value)[:64] if value else None

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures") or []
        return str(archs[0])[:128] if archs else None

    def row_fields(self) -> dict[str, Any]:
        """The model-row columns this listing entry fills."""
        return {
            "revision": self.sha,
            "source": "hub",
            "downloads": self.downloads,
            "likes": self.likes,
            "num_parameters": self.total_parameters,
            "model_type": self.model_type,
            "architecture": self.architecture,
            "library_name": (self.library_name or None) and self.library_name[:64],
            "base_models": self.base_models,
            "tags": self.tags,
            "gated": self.gated,
            "has_chat_template": self.has_chat_template,
            "created_at": self.created_at,
            "last_modified": self.last_modified,
        }


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def lineage(base_models: Any, tags: Iterable[str]) -> list[str]:
    """Base-model ids from the Hub's `baseModels` field and `base_model:[relation:]id` tags."""
    found: list[str] = []
    if isinstance(base_models, dict):
        for entry in base_models.get("models") or []:
            if isinstance(entry, dict) and entry.get("id"):
                found.append(str(entry["id"]))
    elif isinstance(base_models, list):
        found += [str(b.get("id") if isinstance(b, dict) else b) for b in base_models if b]
    for tag in tags:
        if not tag.startswith("base_model:"):
            continue
        rest = tag[len("base_model:") :]
        relation, sep, repo = rest.partition(":")
        found.append(repo if sep and relation in LINEAGE_RELATIONS else rest)
    return list(dict.fromkeys(b for b in found if b))


def _count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def decide(
    c: Candidate, filters: Filters, *, has_access: Callable[[Candidate], bool] | None = None
) -> Decision:
    """Apply the filters in a fixed order; the first that fails names the skip reason."""
    wanted = filters.library
    library_ok = c.is_transformers if wanted == "transformers" else c.library_name == wanted
    if filters.library and not library_ok:
        return Decision("skipped", "not-transformers", f"library {c.library_name or 'unknown'}")
    if filters.require_safetensors and not c.parameters:
        return Decision("skipped", "no-safetensors", "no safetensors weights")
    if filters.skip_quantized and (why := c.quantized):
        return Decision("skipped", "quantized", why)
    if c.total_parameters is not None and c.total_parameters > filters.max_params:
        return Decision(
            "skipped",
            "too-large",
            f"{_count(c.total_parameters)} parameters > {_count(filters.max_params)}",
        )
    if (c.downloads or 0) < filters.min_downloads:
        return Decision(
            "skipped",
            "low-downloads",
            f"{c.downloads or 0} downloads in the last 30 days < {filters.min_downloads}",
        )
    if filters.require_chat_template and not c.has_chat_template:
        return Decision("skipped", "no-chat-template", "no chat template in the repo")
    if c.gated:
        if not filters.allow_gated:
            return Decision("skipped", "gated", "gated repos are excluded")
        if has_access is None or not has_access(c):
            return Decision("skipped", "gated", "gated, and the token (HF_TOKEN) has no access")
    return Decision("queued")


# --- gated access ---------------------------------------------------------------------------


def token_has_access(api: Any, c: Candidate) -> bool:
    """Whether the token may download a gated repo: a HEAD of its config.json."""
    if not api.token:
        return False
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    url = hf_hub_url(c.repo_id, "config.json", revision=c.sha, endpoint=api.endpoint)
    try:
        get_hf_file_metadata(url, token=api.token, timeout=client.timeout())
    except (GatedRepoError, RepositoryNotFoundError):
        return False
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return False
        raise
    return True


def _accepts(function: Callable[..., Any], name: str) -> bool:
    import inspect

    return name in inspect.signature(function).parameters


def list_candidates(
    api: Any, filters: Filters, *, sort: str, limit: int | None = None
) -> Iterator[Candidate]:
    """Text-generation models, newest first by `sort`, one page at a time (lazy)."""
    kwargs: dict[str, Any] = {
        "filter": PIPELINE_TAG,
        "sort": sort,
        "expand": list(EXPAND),
        "limit": limit,
    }
    if filters.hub_prefilter and _accepts(api.list_models, "num_parameters"):
        kwargs["num_parameters"] = f"max:{filters.max_params}"
    for info in api.list_models(**kwargs):
        yield Candidate.from_info(info)


# --- polling --------------------------------------------------------------------------------


@dataclass
class PollResult:
    """What a poll saw and decided."""

    seen: int = 0
    new: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    decisions: dict[str, Decision] = field(default_factory=dict)
    full: bool = True
    complete: bool = False


@dataclass
class _Known:
    revision: str | None
    status: str


def _known_models(store: Store) -> dict[str, _Known]:
    known = queries.known_models(store)
    return {repo: _Known(rev, status) for repo, (rev, status) in known.items()}


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return _aware(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        return None


def watermark(store: Store, endpoint: str, filters: Filters) -> dict[str, datetime] | None:
    """The stored watermark, if it was made against this endpoint with these filters."""
    state = store.get_state(STATE_KEY)
    if state.get("endpoint") != endpoint or state.get("filters") != filters.fingerprint():
        return None
    created = _parse_time(state.get("created_at"))
    modified = _parse_time(state.get("last_modified"))
    if created is None or modified is None:
        return None
    return {"created_at": created, "last_modified": modified}


def poll(
    store: Store,
    api: Any,
    filters: Filters,
    *,
    full: bool = False,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[str], None] | None = None,
) -> PollResult:
    """List the Hub incrementally, decide every new or changed model and record the decision."""
    endpoint = api.endpoint.rstrip("/")
    mark = None if full else watermark(store, endpoint, filters)
    known = _known_models(store)
    result = PollResult(full=mark is None)
    seen: set[str] = set()
    newest: dict[str, datetime] = dict(mark or {})

    pending: dict[str, dict[str, Any]] = {}

    def access(c: Candidate) -> bool:
        return token_has_access(api, c)

    def flush() -> None:
        if pending and not dry_run:
            queries.record_models(store, pending)
        pending.clear()

    def walk(sort: str, key: str) -> bool:
        """Visit one listing; False when stopped before its end or the watermark."""
        for c in list_candidates(api, filters, sort=sort):
            if stop is not None and stop.is_set():
                return False
            for name in ("created_at", "last_modified"):
                value = getattr(c, name)
                if value is not None and (newest.get(name) is None or value > newest[name]):
                    newest[name] = value
            stamp = getattr(c, key)
            c.repo_id = storable_id(str(c.repo_id or ""))
            old = known.get(c.repo_id)
            unchanged = old is not None and old.revision == c.sha
            if mark is not None and stamp is not None and stamp < mark[key] and unchanged:
                return True
            if c.repo_id in seen:
                continue
            seen.add(c.repo_id)
            result.seen += 1
            pending[c.repo_id] = _visit(c, old, filters, access, result)
            if len(pending) >= BATCH:
                flush()
                if progress is not None:
                    progress(f"  {result.seen} models decided")
        return True

    try:
        complete = walk("created_at", "created_at")
        if complete and mark is not None:
            complete = walk("last_modified", "last_modified")
    except AtlasError:
        flush()
        raise
    except Exception as exc:
        flush()  # what was decided stays decided; the watermark does not move
        raise HubError(f"listing models on {endpoint} failed: {client.short(exc, 300)}") from exc
    flush()
    result.complete = complete
    if complete and not dry_run and newest.get("created_at") and newest.get("last_modified"):
        store.set_state(
            STATE_KEY,
            {
                "endpoint": endpoint,
                "filters": filters.fingerprint(),
                "created_at": newest["created_at"].isoformat(),
                "last_modified": newest["last_modified"].isoformat(),
                "polled_at": datetime.now(timezone.utc).isoformat(),
            },
        )
    return result


def _visit(
    c: Candidate,
    old: _Known | None,
    filters: Filters,
    access: Callable[[Candidate], bool],
    result: PollResult,
) -> dict[str, Any]:
    """Decide (or refresh) one listed model; returns the model-row fields to record."""
    fields = c.row_fields()
    invalid = invalid_id(c.listed_id)
    if invalid is not None:  # recorded, never queued: huggingface_hub would refuse it
        if old is None:
            result.new.append(c.repo_id)
            result.skipped[INVALID_ID] += 1
        return {**fields, "revision": None, "status": "skipped", "reason": INVALID_ID,
                "detail": f"{invalid}: {c.listed_id[:1000]!r}"}  # fmt: skip
    changed = old is not None and old.revision != c.sha
    if old is None:
        result.new.append(c.repo_id)
    elif changed:
        result.updated.append(c.repo_id)
    revisit = old is None or old.status in UNDECIDED or (changed and old.status != "scored")
    if not revisit:
        # Queued, scoring, scored or failed at the same revision (or scored at an older one:
        # its vectors stay, keyed by their revision; `--rescore-updated` queues it again).
        return fields
    decision = decide(c, filters, has_access=access)
    result.decisions[c.repo_id] = decision
    if decision.status == "queued":
        result.queued.append(c.repo_id)
    elif old is None or changed or old.status != "skipped":
        result.skipped[decision.reason or "unknown"] += 1  # new decisions only
    if changed:
        fields["attempts"] = 0
    return {**fields, "status": decision.status, "reason": decision.reason,
            "detail": decision.detail}  # fmt: skip


