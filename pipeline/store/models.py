"""Model directories on any storage: fetched once per node into a local cache, verified by checksum.

A task's ``model`` is a local directory, a URI (``s3://bucket/models/re-ddi``), or a model name
(:mod:`biogpt.hub`: a Hub id ``microsoft/biogpt[@revision]``, a pulled release ``biogpt:re-ddi``).
:func:`pin` turns a name into what every node can load the same: ``hf://repo@<commit>`` (each
node fetches that commit into its own Hub cache, or finds it there) or the release's local folder.
Loading needs local files, so :func:`materialize` copies a remote model directory into
:func:`biogpt.hub.model_home` (``$BIOMINE_MODEL_CACHE``, default ``~/.cache/biomine/models``) as
``<sha256>/<name>/`` (the name kept: rows carry it as their ``model_id``) and returns that path;
a second call on the same node finds it and only checks the marker. The checksum
(:func:`model_checksum`: sha256 over the config, weight and vocabulary files, in name order) is the
model's identity everywhere: the run records it, output fingerprints include it, and a node whose copy
does not match the driver's (the model changed on storage during the run) refuses to load it.

Processes of one node that ask at once wait for one download (a lock file in the cache); it goes to
a private temporary folder that is renamed into place when complete, so nobody sees half a model.

:raises StoreError: no model files at the location, or a copy whose checksum differs from the one expected.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from biogpt import hub
from pipeline.errors import StoreError
from pipeline.store.storage import Location, location

log = logging.getLogger(__name__)

_VERIFIED = ".biomine-verified"
cache_root = hub.model_home  # one folder for every model biomine keeps


def pin(model: str) -> str:
    """``model`` as every node can load it: a Hub id (``hf://repo[@rev]``, as the job parser writes
    it) resolved (fetched here if need be) to ``hf://repo@<commit>``, a release name to its local
    folder; paths and URIs unchanged.

    :raises ReleaseError: ``biogpt:NAME`` where NAME is no released model (the nearest are named).
    :raises CheckpointError: a name that does not resolve (see :func:`biogpt.hub.resolve`).
    """
    if not hub.is_explicit_name(model):
        return model
    ref = hub.parse(model)
    if ref.kind == "release":
        # A misspelt name is no release at all: say so, rather than "not pulled, pull it" (which
        # `models pull` would then refuse as unknown).
        from pipeline.store.releases import release

        release(ref.value, prefix=hub.RELEASE_PREFIX)
    return hub.pinned(hub.resolve(model))


def describe(model: str) -> dict:
    """What a manifest records about ``model``: its ``model_id``, where it is, and for a Hub model
    the repository and commit (``hf://repo@<commit>`` after :func:`pin`)."""
    out: dict[str, str | None] = {"model_id": hub.model_name(model), "path": model}
    if hub.is_explicit_name(model):
        ref = hub.parse(model)
        out.update({"hub": ref.value, "revision": ref.revision} if ref.kind == "hub" else {"release": ref.value})
    elif os.path.dirname(os.path.normpath(model)) == str(hub.released_dir("")).rstrip("/"):
        out["release"] = os.path.basename(os.path.normpath(model))
    return out


def _model_files(loc: Location) -> list[str]:
    """Every file that defines the model (config, weights, vocabularies such as dict.txt and
    bpecodes, task settings): all but hidden ones (our marker among them)."""
    return [n for n in loc.files() if not n.startswith(".")]


def model_checksum(model: str | os.PathLike | Location) -> str:
    """sha256 over the model's defining files (name order); reads them from wherever they are
    (a model name: from the local folder it resolves to)."""
    if isinstance(model, str) and hub.is_explicit_name(model):
        model = hub.resolve(model).path
    loc = location(model)
    if loc.is_local and not loc.local_path().is_dir():
        raise StoreError(hub.no_folder(loc.local_path(), loc.local_path()), setting="model")
    names = _model_files(loc)
    if not names:
        raise StoreError(f"{loc} holds no model files (config.json, *.safetensors ...): pass a model directory")
    h = hashlib.sha256()
    for name in names:
        with (loc / name).open_input() as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def materialize(model: str | os.PathLike | Location, sha256: str | None = None) -> Path:
    """A local directory holding ``model``: the directory itself when it is local, else the cached
    copy (fetched if this node has none). With ``sha256`` the copy must have that checksum.

    A Hub model pinned to a commit (``hf://repo@<commit>``) comes from this node's Hub cache
    (fetched there if missing): the commit fixes the files and huggingface_hub checks each against
    the Hub's etag/sha256.

    :raises StoreError: no model files, or a checksum other than ``sha256``.
    :raises CheckpointError: a model name that does not resolve on this node.
    """
    if isinstance(model, str) and hub.is_explicit_name(model):
        return hub.resolve(model).path
    loc = location(model)
    if loc.is_local:
        return loc.local_path()
    root = cache_root()
    if sha256 and (root / sha256 / loc.name / _VERIFIED).exists():
        return root / sha256 / loc.name
    root.mkdir(parents=True, exist_ok=True)
    # One fetch per node: the prepare tasks and the actors of a node all ask at once; the first to
    # take the lock downloads, the others find its verified copy when they get the lock.
    with open(root / f".lock-{hashlib.sha256(loc.uri.encode()).hexdigest()[:16]}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if sha256 and (root / sha256 / loc.name / _VERIFIED).exists():
            return root / sha256 / loc.name
        return _fetch(loc, root, sha256)


def _fetch(loc: Location, root: Path, sha256: str | None) -> Path:
    names = _model_files(loc)
    if not names:
        raise StoreError(f"{loc} holds no model files (config.json, *.safetensors ...): pass a model directory")
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        for name in names:
            (loc / name).download(tmp / name)
        got = model_checksum(tmp)
        if sha256 and got != sha256:
            raise StoreError(
                f"the model at {loc} has checksum {got[:12]}... but this run started with "
                f"{sha256[:12]}...: it changed on storage during the run; re-run the job"
            )
        (tmp / _VERIFIED).write_text(str(loc) + "\n")
        final = root / got / loc.name
        final.parent.mkdir(exist_ok=True)
        try:
            os.rename(tmp, final)
            log.info("fetched model %s into %s", loc, final)
        except OSError:  # already there (fetched by a run that did not know the checksum): keep it
            if not (final / _VERIFIED).exists():
                raise
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def vocabulary_checksum(vocabulary: str) -> str:
    """sha256 of a concept dictionary file (``biomine vocab build``), after checking it is one.

    :raises StoreError: no such file, or a file that is not a concept dictionary.
    """
    from schemas._rows import SchemaMismatchError
    from schemas.concepts import check_schema

    loc = location(vocabulary)
    if not loc.exists() or loc.is_dir():
        raise StoreError(f"vocabulary = {vocabulary!r}: no such file; build one with `biomine vocab build`")
    try:
        check_schema(loc.parquet_metadata().schema.to_arrow_schema(), str(loc))
    except (SchemaMismatchError, OSError, ValueError) as exc:
        raise StoreError(f"vocabulary = {vocabulary!r}: {exc}; build one with `biomine vocab build`") from None
    return loc.sha256()


def materialize_file(uri: str, sha256: str | None = None) -> Path:
    """A local copy of the file ``uri`` (itself when local), fetched once per node into
    ``<model_home>/files/<sha256>/<name>`` and checked against ``sha256``.

    :raises StoreError: the copy's checksum differs (the file changed during the run).
    """
    loc = location(uri)
    if loc.is_local:
        return loc.local_path()
    root = cache_root() / "files"
    if sha256 and (root / sha256 / loc.name).is_file():
        return root / sha256 / loc.name
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        loc.download(tmp / loc.name)
        got = hashlib.sha256((tmp / loc.name).read_bytes()).hexdigest()
        if sha256 and got != sha256:
            raise StoreError(
                f"{loc} has checksum {got[:12]}... but this run started with {sha256[:12]}...: it "
                "changed on storage during the run; re-run the job"
            )
        final = root / got
        final.mkdir(exist_ok=True)
        os.replace(tmp / loc.name, final / loc.name)
        return final / loc.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
