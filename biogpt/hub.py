"""Where a model name points: a local directory, a Hugging Face Hub id, or a pulled released checkpoint.

Contract:

- A *model reference* is one of

  ==========================  ==================================================================
  ``models/re-ddi``           a local directory (config.json + weights); always wins when it exists,
                              and a path whose parent folder exists (``models/``) is never a Hub id
  ``microsoft/biogpt``        a Hub repository id, optionally ``@revision`` (branch, tag or commit)
  ``hf://microsoft/biogpt``   the same, unambiguous (``hf://owner/name@revision``)
  ``biogpt:re-ddi``           a released fairseq checkpoint that ``biomine models pull re-ddi``
                              downloaded and converted into :func:`released_dir`
  ==========================  ==================================================================

  :func:`parse` tells them apart; :func:`resolve` returns a local directory for any of them.
- Hub repositories are fetched with ``huggingface_hub`` into its own cache, read from the environment
  at call time: ``HF_HOME`` / ``HF_HUB_CACHE`` (where), ``HF_TOKEN`` (private and gated repos),
  ``HF_ENDPOINT`` (a mirror), ``HF_HUB_OFFLINE=1`` (the cache only, no network). Only the files a
  model needs are fetched: config, tokenizer files and ONE weight format (safetensors when the
  revision has them, else ``pytorch_model.bin``), so a repository holding both is not fetched twice.
  The revision a branch or tag pointed at is resolved to its commit (:attr:`Resolved.revision`), so a
  job can pin it (:func:`pinned`) and every node loads the same weights.
- :func:`model_home` (``$BIOMINE_MODEL_CACHE``, default ``~/.cache/biomine/models``) is the one
  folder biomine keeps models in: pulled releases under ``released/<name>/``, per-node copies of
  models on object storage under ``<sha256>/<name>/`` (:mod:`pipeline.store.models`).

:raises CheckpointError: from :func:`resolve`: a name that is neither a directory nor a known
    Hub repository / revision, a release that was not pulled, no network and nothing cached.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CheckpointError

RELEASE_PREFIX = "biogpt:"
HF_SCHEME = "hf://"
# Hub repo ids (huggingface_hub.utils.validate_repo_id): owner/name of letters, digits, "-", "_", ".";
# a revision after "@" may hold "/" (branches such as refs/pr/3).
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]+))?")
_RELEASE = re.compile(r"[a-z0-9][a-z0-9-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")
#: What a model directory needs from a Hub repository, besides ONE weight format.
HUB_FILES = (
    "config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "biomine_task.json",
)
_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")
_TORCH_BIN = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin")


@dataclass(frozen=True)
class Reference:
    """A parsed model reference: ``kind`` is ``path``, ``hub`` or ``release``."""

    kind: str
    value: str  # the path, the Hub repo id, or the release name
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "hub":
            return f"{HF_SCHEME}{self.value}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "release":
            return RELEASE_PREFIX + self.value
        return self.value


@dataclass(frozen=True)
class Resolved:
    """A model reference resolved on this machine: ``path`` is a local model directory."""

    path: Path
    reference: Reference
    #: the Hub commit the files came from (None for local directories and releases)
    revision: str | None = None
    #: what the manifest records about where the model came from
    source: dict = field(default_factory=dict)


def model_home() -> Path:
    """The folder biomine keeps models in (``$BIOMINE_MODEL_CACHE``, default ``~/.cache/biomine/models``)."""
    return Path(os.environ.get("BIOMINE_MODEL_CACHE") or Path.home() / ".cache" / "biomine" / "models")


def released_dir(name: str) -> Path:
    """Where ``biomine models pull NAME`` puts the converted checkpoint ``NAME``."""
    return model_home() / "released" / name


def parse(spec: str | os.PathLike, revision: str | None = None, base_dir: str | os.PathLike | None = None) -> Reference:
    """The reference ``spec`` names. An existing directory (relative to ``base_dir`` when given) is
    always a path; ``owner/name`` is a Hub id only when neither ``owner/name`` nor ``owner/`` exists.

    :raises CheckpointError: ``biogpt:NAME`` with a malformed name, or ``hf://`` with a malformed id.
    """
    text = os.fspath(spec)
    if text.startswith(RELEASE_PREFIX):
        name = text[len(RELEASE_PREFIX) :]
        if not _RELEASE.fullmatch(name):
            raise CheckpointError(
                f"{text!r}: a released model is biogpt:NAME with NAME from `biomine models list --available`"
            )
        return Reference("release", name)
    if text.startswith(HF_SCHEME):
        m = _HUB_ID.fullmatch(text[len(HF_SCHEME) :])
        if not m:
            raise CheckpointError(f"{text!r} is not a Hub id: write hf://owner/name or hf://owner/name@revision")
        return Reference("hub", m["repo"], revision or m["revision"])
    local = Path(base_dir, text) if base_dir is not None else Path(text)
    m = _HUB_ID.fullmatch(text)
    # ``models/ner-tni`` where ``models/`` is a folder here is a misspelt folder, not the Hub
    # repository of an owner called "models": it is a path (and says so when missing), no network.
    if m and not local.exists() and not local.parent.is_dir() and not text.startswith((".", "/")):
        return Reference("hub", m["repo"], revision or m["revision"])
    return Reference("path", os.path.normpath(local))


def no_folder(spec: str | os.PathLike, path: str | os.PathLike) -> str:
    """What to say of a model path ``spec`` whose folder ``path`` does not exist (one wording for
    every reader of model paths)."""
    where = "" if os.fspath(spec) == os.fspath(path) else f" ({os.fspath(path)})"
    return (
        f"{os.fspath(spec)!r}: no such local folder{where}; check the path (a Hub model is "
        "named owner/name where no folder owner/ exists here, or hf://owner/name; a released one biogpt:NAME)"
    )


def is_name(spec: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``spec`` is a Hub id or a release name rather than a path."""
    try:
        return parse(spec, base_dir=base_dir).kind != "path"
    except CheckpointError:
        return True  # a malformed name is still a name (resolve says what is wrong)


def is_explicit_name(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` is a name by its prefix (``hf://``, ``biogpt:``): what a job's model becomes
    once :func:`pinned`; code past the job parser never reads a bare ``owner/name`` as a Hub id."""
    return os.fspath(spec).startswith((HF_SCHEME, RELEASE_PREFIX))


def model_name(spec: str | os.PathLike) -> str:
    """The id output rows carry for ``spec``: the Hub repo id, the release name, or the directory's
    name. A directory inside the Hub cache (``models--owner--name/snapshots/<commit>``) gives its repo id."""
    text = os.fspath(spec).rstrip("/")
    ref = parse(text) if text.startswith((RELEASE_PREFIX, HF_SCHEME)) else None
    if ref is not None:
        return ref.value
    path = Path(text)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--") :].replace("--", "/")
    return path.name


def pinned(resolved: Resolved) -> str:
    """A reference that names exactly the files ``resolved`` holds: ``hf://repo@<commit>`` for a
    Hub model (so every node fetches the same revision), else the local directory."""
    if resolved.reference.kind == "hub":
        return str(Reference("hub", resolved.reference.value, resolved.revision))
    return str(resolved.path)


def resolve(spec: str | os.PathLike, revision: str | None = None) -> Resolved:
    """A local directory holding the model ``spec`` names (downloading a Hub model if needed).

    :raises CheckpointError: see the module docstring.
    """
    ref = parse(spec, revision)
    if ref.kind == "path":
        return Resolved(Path(ref.value), ref, source={"path": ref.value})
    if ref.kind == "release":
        path = released_dir(ref.value)
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{ref}: not pulled on this machine ({path} is empty); run `biomine models pull "
                f"{ref.value}` (names: `biomine models list --available`)"
            )
        return Resolved(path, ref, source={"release": ref.value, "path": str(path)})
    path, commit = hub_snapshot(ref.value, ref.revision)
    return Resolved(
        path,
        ref,
        revision=commit,
        source={"hub": ref.value, "revision": commit, "requested_revision": ref.revision or "main"},
    )


def hub_settings() -> dict:
    """huggingface_hub settings read NOW (it reads some at import, before a caller or test sets them)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return {
        "endpoint": (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
        "cache_dir": os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"),
        "offline": os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"),
        "token": os.environ.get("HF_TOKEN") or None,  # None: huggingface_hub's stored login, if any
    }


def _weight_patterns(files: list[str]) -> tuple[str, ...]:
    import fnmatch

    has = lambda patterns: any(fnmatch.fnmatch(f, p) for f in files for p in patterns)  # noqa: E731
    if has(_SAFETENSORS):
        return _SAFETENSORS
    if has(_TORCH_BIN):
        return _TORCH_BIN
    return ()


def _complete(path: Path) -> bool:
    """Whether a cached snapshot holds config.json and weights."""
    return (path / "config.json").is_file() and bool(_weight_patterns([p.name for p in path.iterdir()]))


def _network_errors() -> tuple[type[BaseException], ...]:
    """OSError and the HTTP client's network errors (huggingface_hub's client: httpx, or its fork httpx2)."""
    out: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            out.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def hub_snapshot(repo_id: str, revision: str | None = None) -> tuple[Path, str]:
    """``(local directory, commit)`` of ``repo_id`` at ``revision`` (default ``main``), fetched into
    the Hub cache unless it is there; offline (``HF_HUB_OFFLINE=1``) from the cache only.

    :raises CheckpointError: unknown repository or revision, a gated/private repository without
        access, no weights in it, or no network and nothing cached.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hf_errors

    settings = hub_settings()
    name = f"{repo_id}@{revision}" if revision else repo_id
    where = f"the Hub at {settings['endpoint']}"
    try:
        cached = None
        if not settings["offline"] and revision and _COMMIT.fullmatch(revision):
            # A commit never changes: a node whose cache holds it needs no network (a job's workers).
            try:
                cached = Path(
                    snapshot_download(
                        repo_id, revision=revision, cache_dir=settings["cache_dir"], local_files_only=True
                    )
                )
            except hf_errors.LocalEntryNotFoundError:
                cached = None
            if cached is not None and not _complete(cached):
                cached = None  # an interrupted fetch left part of it: fetch the rest
        if cached is not None:
            path = cached
        elif settings["offline"]:
            path = Path(
                snapshot_download(repo_id, revision=revision, cache_dir=settings["cache_dir"], local_files_only=True)
            )
            if not _complete(path):
                raise CheckpointError(
                    f"{name}: HF_HUB_OFFLINE is set and the cached snapshot {path} lacks "
                    "config.json or weights (an interrupted fetch); fetch it again with network"
                )
        else:
            api = HfApi(endpoint=settings["endpoint"], token=settings["token"])
            info = api.model_info(repo_id, revision=revision)
            files = [s.rfilename for s in info.siblings or []]
            weights = _weight_patterns(files)
            if not weights:
                raise CheckpointError(
                    f"{name} on {where} holds no model.safetensors or pytorch_model.bin "
                    f"(files: {', '.join(sorted(files)[:10])}); it is not a BioGPT model"
                )
            # The requested revision (not info.sha), so the cache records where the branch/tag
            # pointed (refs/main) and an offline run finds it; the snapshot folder is the commit.
            path = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=settings["cache_dir"],
                    endpoint=settings["endpoint"],
                    token=settings["token"],
                    allow_patterns=list(HUB_FILES + weights),
                )
            )
    except hf_errors.HFValidationError as exc:
        raise CheckpointError(
            f"{name!r} is neither a model directory nor a valid Hub id ({exc}); check the path"
        ) from None
    except hf_errors.GatedRepoError:
        raise CheckpointError(f"{name} on {where} is gated: accept its terms on the Hub and set HF_TOKEN") from None
    except hf_errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"{name}: no such model repository on {where} (a private one needs HF_TOKEN); "
            "or, if you meant a local directory, it does not exist"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise CheckpointError(
            f"{name}: revision {revision!r} is not a branch, tag or commit of {repo_id} on {where}"
        ) from None
    except hf_errors.LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if settings["offline"] else f"{where} cannot be reached"
        raise CheckpointError(
            f"{name}: {why} and the Hub cache ({settings['cache_dir']}) does not hold it; "
            "fetch it once with network (`biomine models pull " + repo_id + "`)"
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        raise CheckpointError(f"{name}: {where} answered {str(exc).splitlines()[0]}") from None
    except _network_errors() as exc:  # connection refused, DNS, timeouts, disk
        raise CheckpointError(
            f"{name}: cannot fetch from {where}: {exc}; set HF_HUB_OFFLINE=1 to use the cache, "
            "or HF_ENDPOINT for a mirror"
        ) from None
    commit = path.name
    if not _COMMIT.fullmatch(commit):  # snapshot_download returns .../snapshots/<commit>
        raise CheckpointError(f"{name}: unexpected Hub cache layout at {path}")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{name} on {where} has no config.json; it is not a model repository")
    return path, commit
