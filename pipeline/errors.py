"""Every error the pipeline raises for a user's mistake, in one place.

The CLI (:mod:`pipeline.cli`) prints any :class:`~biogpt.errors.BioMineError` as one
``biomine: error: ...`` line with exit status 2, so each class here says *what kind* of input was
at fault and its message names the record, file or key and the fix. The hierarchy follows the flow
of the pipeline (``docs/architecture.md``)::

    BioMineError (biogpt.errors)
    +-- ConfigError (biogpt.errors): a model config.json
    |   +-- JobConfigError: a job file or command-line option
    +-- CheckpointError (biogpt.errors)
    |   +-- TaskSettingsError (biogpt.errors): a checkpoint's biomine_task.json
    +-- IngestError: PubMed data could not be read
    |   +-- PubmedXMLError: malformed/truncated XML or an NCBI error document
    |   +-- EutilsError: an E-utilities request failed for good
    |   +-- SyncError: NCBI's PubMed files could not be mirrored (download, .md5 check, listing)
    +-- StoreError: an output location cannot be used as asked
    |   +-- StorageError: a storage call failed (credentials, bucket, endpoint), naming the URI
    |   +-- ShardStateError: a document-shard store (owner, lock, manifest)
    +-- StageError: a Ray stage cannot run at all
    +-- WrongModelError: a task was given a checkpoint of the wrong kind
    +-- DataFormatError, RecordError, LabelSchemeError, UnknownTaskError, EvaluationError,
        NerTrainingError, ClassifyTrainingError: task data, labels, benchmarks and training

Errors speak the domain of the room that raises them: ``pipeline/store``, ``pubmed``, ``tasks``,
``outputs`` and ``biogpt`` never name a command-line flag or a job-file key. Where the fix is to
change something the user set, the error's ``setting`` (:class:`~biogpt.errors.BioMineError`) names
it in the raising function's terms, and the layer that knows how the user spelled it adds that
spelling (:meth:`~biogpt.errors.BioMineError.spell`; ``str()`` then ends with ``(--out)`` or
``([job] output)``): ``pipeline/run`` for a job (:data:`pipeline.run.jobspec.JOB_KEYS`), each
command for its flags (``settings=`` in its ``set_defaults``, applied by :func:`pipeline.cli.main`).
The settings in use:

=================================  ===========================================================
``output``                         an output location (``ingest``/``fetch`` ``--out``; ``[job] output``)
``email``, ``api_key``, ``tool``,  NCBI E-utilities (``fetch`` ``--email``, ...; the job's ``[source]``)
``eutils_url``, ``query``,
``mindate``, ``maxdate``,
``max_records``, ``rate``
``task``, ``model``                a task's checkpoint (``eval re --task``; ``[tasks.re] task``)
``dict_file``, ``bpecodes_file``,  converting a fairseq checkpoint (``convert fairseq --dict``, ...)
``overwrite``
``mirror``, ``allow_http``,        pulling a released checkpoint (``models pull --mirror``, ...);
``sha256``                         syncing PubMed's files (``sync --mirror``; the job's ``[source]``)
``as_of``, ``dest``, ``fmt``       reading an output (``query --as-of``; ``export``/``kb build --out``)
=================================  ===========================================================

Programming errors stay ordinary exceptions (and keep their tracebacks).
"""

from __future__ import annotations

from biogpt.errors import BioMineError, CheckpointError, ConfigError, TaskSettingsError

__all__ = [
    "BioMineError",
    "CheckpointError",
    "ConfigError",
    "TaskSettingsError",
    "JobConfigError",
    "IngestError",
    "PubmedXMLError",
    "EutilsError",
    "SyncError",
    "StoreError",
    "StorageError",
    "ShardStateError",
    "StageError",
    "WrongModelError",
    "DataFormatError",
    "RecordError",
    "LabelSchemeError",
    "UnknownTaskError",
    "EvaluationError",
    "NerTrainingError",
    "ClassifyTrainingError",
]


class JobConfigError(ConfigError):
    """A job file or a command-line option has an unknown key or an invalid value."""


# --- ingestion (pipeline/pubmed) -------------------------------------------------------------------
class IngestError(BioMineError):
    """PubMed data could not be fetched, parsed or read (base of the ingestion errors)."""


class PubmedXMLError(IngestError):
    """A PubMed XML document is malformed, truncated, or an error response.

    ``ncbi_error`` holds the text of an NCBI ``<ERROR>`` element when the document was one.
    """

    def __init__(self, message: str, ncbi_error: str | None = None):
        super().__init__(message)
        self.ncbi_error = ncbi_error


class EutilsError(IngestError):
    """An E-utilities request failed for good, or a query cannot be fetched as asked."""


class SyncError(IngestError):
    """PubMed's baseline/update files could not be mirrored: a download failed for good, a file
    failed its ``.md5`` twice, or the mirror's listing is not what was expected."""


# --- storage (pipeline/store) ----------------------------------------------------------------------
class StoreError(BioMineError):
    """An output location cannot be used as asked (wrong owner, in use, or inconsistent)."""


class StorageError(StoreError, OSError):
    """A storage operation failed: wrong credentials, a missing bucket, an unreachable endpoint."""


class ShardStateError(StoreError):
    """A document-shard store cannot be used as asked (wrong owner, locked, or inconsistent)."""


# --- running (pipeline/run) ------------------------------------------------------------------------
class StageError(BioMineError):
    """A stage cannot run at all (e.g. its model does not load); completed shards are kept."""


# --- tasks (pipeline/tasks) ------------------------------------------------------------------------
class WrongModelError(BioMineError):
    """A task was given a checkpoint of the wrong kind (e.g. a base LM for relation extraction)."""


class DataFormatError(BioMineError):
    """A benchmark or PubTator file does not have the expected layout."""


class RecordError(BioMineError):
    """A data record lacks what its task's input format needs."""


class LabelSchemeError(BioMineError):
    """A label list is not a BIO / BIOES scheme."""


class UnknownTaskError(BioMineError):
    """A relation-extraction task name that has no output grammar."""


class EvaluationError(BioMineError):
    """The predictions cannot be scored against the gold data."""


class NerTrainingError(BioMineError):
    """NER training cannot start: a missing base model, an occupied output directory, bad settings."""


class ClassifyTrainingError(BioMineError):
    """Classifier training cannot start: a missing base model, an occupied output directory, bad settings."""
