"""The one Hub client: endpoint, token and timeout, one retry policy, weight downloads.

Every Hub call atlas makes goes through `with_retries` exactly once: a transient failure (5xx,
408, 429, timeouts, cut connections) is retried after each of `RETRY_DELAYS` (the environment's
`ATLAS_HUB_RETRY_DELAYS` overrides them), anything else is
raised at once. huggingface_hub's own retries (it retries `list_models` pages and failed HEADs)
sit inside one attempt; nothing else wraps these calls again, so a permanently broken file
costs at most `len(RETRY_DELAYS) + 1` attempts. A file whose HEAD keeps failing is not retried
here at all: huggingface_hub has already retried that HEAD with its own backoff.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atlas import settings

# Waits between attempts of a Hub call that failed transiently (len + 1 attempts in all).
RETRY_DELAYS: tuple[float, ...] = (0.5, 2.0, 8.0)

# Root-level files a scorer needs: weights (safetensors only), configs, tokenizer, templates.
ALLOW_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken")


def endpoint() -> str:
    """The Hub to talk to: `HF_ENDPOINT` now, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (settings.hf_endpoint() or constants.ENDPOINT).rstrip("/")


def token() -> str | None:
    """The user's token (HF_TOKEN or the stored login); never logged, printed or stored."""
    found = settings.hf_token()
    if found:
        return found
    from huggingface_hub import get_token

    return get_token()


def timeout() -> float:
    """Seconds to wait for a Hub answer (HF_HUB_ETAG_TIMEOUT, read at call time)."""
    from huggingface_hub import constants

    return settings.hf_timeout(float(constants.HF_HUB_ETAG_TIMEOUT))


def make_api(endpoint_url: str | None = None, hub_token: str | None = None) -> Any:
    """An `HfApi` with the endpoint passed explicitly (HF_ENDPOINT is read at import time)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint_url or endpoint(), token=hub_token or token() or False)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP client huggingface_hub talks through.

    huggingface_hub 1.x uses httpx; 2.x its fork httpx2: whichever is installed.
    """
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def is_transient(exc: BaseException) -> bool:
    """Whether a Hub failure is worth retrying (5xx, 408, 429, timeouts, cut connections)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, LocalEntryNotFoundError):
        # hf_hub_download raises this only after retrying the failed HEAD itself (five times,
        # up to 23 s): retrying it again here would multiply the requests (issue 11, item 3).
        return False
    if isinstance(
        exc, (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)
    ):
        return False
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status is None or status >= 500 or status in (408, 429)
    if isinstance(exc, _transport_errors()):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT)
    return type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "urllib3")


def short(exc: BaseException, width: int = 200) -> str:
    """An exception as one line of at most `width` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= width else text[: width - 1] + "…"


def with_retries(
    what: str, call: Callable[[], Any], progress: Callable[[str], None] | None = None
) -> Any:
    """Run `call`, retrying transient Hub failures after each of RETRY_DELAYS (or
    `ATLAS_HUB_RETRY_DELAYS`)."""
    delays = list(settings.hub_retry_delays(RETRY_DELAYS))
    while True:
        try:
            return call()
        except Exception as exc:
            if not delays or not is_transient(exc):
                raise
            delay = delays.pop(0)
            if progress is not None:
                progress(f"  {what}: {short(exc)}; retrying in {delay:g} s")
            time.sleep(delay)


@contextmanager
def quiet_bars(quiet: bool = True) -> Iterator[None]:
    """Hide huggingface_hub's download bars inside the block (atlas reports its own progress)."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            enable_progress_bars()


# --- model weights ----------------------------------------------------------------------------


def model_files(repo_id: str, revision: str | None, progress: Callable[[str], None] | None = None
                ) -> tuple[str | None, list[str]]:
    """(commit sha, file names) of a model repo at `revision`."""
    api = make_api()
    info = with_retries(
        f"{repo_id}: model info", lambda: api.model_info(repo_id, revision=revision), progress
    )
    return info.sha, [s.rfilename for s in (info.siblings or [])]


def download(
    repo_id: str,
    revision: str,
    files: list[str],
    cache_dir: Path | None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The local snapshot of exactly `files` of `repo_id` at `revision` (resumes cut files)."""
    from huggingface_hub import snapshot_download

    folder = with_retries(
        f"{repo_id}: download",
        lambda: snapshot_download(
            repo_id, revision=revision, allow_patterns=files, cache_dir=cache_dir,
            endpoint=endpoint(), token=token() or False, etag_timeout=timeout(),
        ),
        progress,
    )
    return Path(folder)


def weights_path(weights_dir: Path, repo_id: str) -> Path:
    """Where a Hub model's files are downloaded: <weights_dir>/models--<org>--<name>."""
    from huggingface_hub.file_download import repo_folder_name

    return weights_dir / repo_folder_name(repo_id=repo_id, repo_type="model")


def remove_weights(weights_dir: Path, repo_id: str) -> None:
    """Delete a model's downloaded files (every revision of it); never raises."""
    try:
        path = weights_path(weights_dir, repo_id)
    except Exception:  # an id huggingface_hub rejects has no folder to remove
        return
    shutil.rmtree(path, ignore_errors=True)
