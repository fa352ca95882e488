"""A job's output location: the one home of its layout and of who owns it.

``OUT`` (a local path or a storage URI) holds:

====================  =========================================================================
``documents/``        the article store the job fetched or ingested (:mod:`pipeline.store.shards`)
``<dataset>/``        one folder per task: ``entities``, ``relations``, ``summaries``
                      (:mod:`pipeline.store.datasets`; the names come from the task registry)
``kb.parquet``        the DDI knowledge base, when one was built
``_manifest.json``    the run record: the job spec, models, counts, timings, failures
``_job.json``         which job owns the location (its name and source)
``_lease.json``       which run holds it now (:mod:`pipeline.store.lease`)
====================  =========================================================================

Nothing else names these paths: the runner, ``biomine query``, ``kb build``, ``export`` and
``compact`` all go through :class:`JobOutput`. A :class:`JobOutput` pickles as its root's URI, like a
:class:`~pipeline.store.storage.Location`, so it can travel to Ray workers.

:raises StoreError: the location belongs to another job, or its ownership record is unreadable.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from pipeline.errors import StoreError
from pipeline.store.datasets import TaskDataset
from pipeline.store.lease import Lease
from pipeline.store.storage import Location, location

DOCUMENTS = "documents"
KB_FILE = "kb.parquet"
RUN_MANIFEST = "_manifest.json"
JOB_FILE = "_job.json"
JOB_FORMAT = "biomine-job"


class JobOutput:
    """The output location of one job (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | Location):
        self.root = location(root)
        self._datasets: dict[str, TaskDataset] = {}

    def __reduce__(self):
        return (JobOutput, (self.root.uri,))

    def __repr__(self) -> str:
        return f"JobOutput({self.root.uri!r})"

    # --- the layout ------------------------------------------------------------------------------
    @property
    def documents(self) -> Location:
        return self.root / DOCUMENTS

    @property
    def kb(self) -> Location:
        return self.root / KB_FILE

    @property
    def manifest(self) -> Location:
        return self.root / RUN_MANIFEST

    def dataset(self, name: str) -> TaskDataset:
        """The one :class:`TaskDataset` of dataset ``name`` (its record cache is shared by every user)."""
        if name not in self._datasets:
            self._datasets[name] = TaskDataset(self.root / name)
        return self._datasets[name]

    def read_manifest(self) -> dict[str, Any] | None:
        """The last run's record (None when no run wrote one)."""
        try:
            return self.manifest.read_json()
        except FileNotFoundError:
            return None

    def write_manifest(self, record: Mapping[str, Any]) -> None:
        self.manifest.write_json(dict(record))

    def lease(self, what: str) -> Lease:
        """The lease every writer of this output takes (one run at a time)."""
        return Lease(self.root, what=what)

    # --- ownership ---------------------------------------------------------------------------------
    def owner(self) -> dict[str, Any] | None:
        """The ``_job.json`` record (None when there is none).

        :raises StoreError: it exists but cannot be read.
        """
        path = self.root / JOB_FILE
        try:
            return path.read_json()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{path} is unreadable ({exc}): use another output, or delete it to give the output to this job"
            ) from None

    def check_owner(self, identity: Mapping[str, Any], *, claim: bool = False) -> None:
        """Refuse when another job owns this location; with ``claim``, record ``identity`` (a job's
        ``{"name", "source"}``) as the owner when none is recorded yet. Without ``claim`` nothing is
        written.

        :raises StoreError: the location holds another job's output (both are named).
        """
        mine = dict(identity)
        theirs = self.owner()
        if theirs is None:
            if not claim:
                return
            if self.documents.exists():
                # An output of this job written before ownership was recorded: adopt it.
                earlier = ((self.read_manifest() or {}).get("job") or {}).get("name")
                if earlier != mine["name"]:
                    raise StoreError(
                        f"{self.root} holds documents but no {JOB_FILE} and no manifest of job {mine['name']!r}: "
                        "it was not written by this job; use another output for it"
                    )
            (self.root / JOB_FILE).write_json({"format": JOB_FORMAT, **mine})
            return
        if {k: theirs.get(k) for k in mine} != mine:
            raise StoreError(
                f"{self.root} belongs to job {theirs.get('name')!r} (source {theirs.get('source')}), not to job "
                f"{mine['name']!r} (source {mine['source']}): use another output for this job, or delete "
                f"{self.root / JOB_FILE} to give it to this job (the other job's outputs would be mixed in)"
            )
