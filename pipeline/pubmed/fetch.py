"""A PubMed query fetched into an output's documents table, through the E-utilities client.

Contract:

- :func:`fetch_query` fetches every hit of a query exactly once into an output's documents table
  (:mod:`pipeline.store.documents`, a Delta table; appends only), with the rate-limited, retrying
  :class:`~pipeline.pubmed.eutils.EutilsClient`. ESearch pages at most 9,999 records, so larger
  queries are split into publication-date ranges (:func:`~pipeline.pubmed.eutils.plan_ranges`:
  halving until each range fits, the per-range counts checked against the total). Each range's ids
  come from one esearch (``usehistory=y``); batches are then fetched over the WebEnv by
  ``retstart``, checked against those ids, and ids still missing (or left over by an interrupted
  run) are fetched by POSTed id list.
- PMIDs already in the output are never fetched again, so a crashed or repeated run resumes where
  it stopped and a later run of the same query adds only new hits. Hits that efetch does not return
  even by id are listed in the final commit's metadata (``notes``) and tried again by a re-run.
- One writer at a time: without a ``lease`` this takes the output's and records the output as the
  query's (its owner); a job run passes the lease it holds.

:raises EutilsError: a request still fails after the retries, a query that cannot be split finely
    enough, a bad date or count (the error's ``setting`` names which).
:raises StoreError: the output is another query's or job's, in use, a file, or a table of an output
    (``setting`` ``"output"``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.errors import EutilsError
from pipeline.progress import Progress
from pipeline.pubmed.eutils import (
    DEFAULT_BATCH_SIZE,
    ESEARCH_LIMIT,
    DateRange,
    EutilsClient,
    date_range,
    plan_ranges,
)
from pipeline.store.documents import DEFAULT_SHARD_ROWS, Documents
from pipeline.store.lease import Lease
from pipeline.store.output import JobOutput

log = logging.getLogger(__name__)

#: What an output written by :func:`fetch_query` records as its owner (``source`` adds the query).
FETCH_OWNER = "biomine fetch"


@dataclass
class FetchSummary:
    """What :func:`fetch_query` did."""

    total_hits: int
    ranges: int
    fetched: int = 0
    already_present: int = 0
    rows: int = 0
    shards: int = 0
    unavailable: list[int] = field(default_factory=list)


def fetch_query(
    client: EutilsClient,
    term: str,
    out: str | os.PathLike | JobOutput,
    *,
    mindate: str | None = None,
    maxdate: str | None = None,
    datetype: str = "pdat",
    max_records: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    split_threshold: int = ESEARCH_LIMIT,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    progress: bool | None = None,
    now: Callable[[], _dt.datetime] | None = None,
    lease: Lease | None = None,
) -> FetchSummary:
    """Fetch every hit of ``term`` (at most ``max_records``, newest first) into the documents table
    of output ``out``, one commit per ``shard_rows`` articles.

    Re-running with the same query and dates resumes or, when complete, only adds new hits.
    ``progress`` None shows a bar on a terminal only, and logs a line every 30 s elsewhere
    (:class:`pipeline.progress.Progress`). ``lease``: the caller (a job run) holds the output's
    lease; else this takes it and records the output as this query's (a first fetch that fails
    before it commits an article leaves no such record: :meth:`JobOutput.unclaim`).

    :raises EutilsError: see the module docstring.
    :raises StoreError: ``out`` holds another query's output or is in use (``setting`` ``"output"``).
    """
    if batch_size < 1 or split_threshold < 1:
        raise ValueError("batch_size and split_threshold must be positive")
    if max_records is not None and max_records < 0:
        raise EutilsError(f"a limit of {max_records} records: give zero or more", setting="max_records")
    date_range(mindate, maxdate)  # a bad date is refused before the output is touched
    now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
    output = out if isinstance(out, JobOutput) else JobOutput(out)
    finished = False
    with contextlib.ExitStack() as stack:
        if lease is None:
            output.refuse_table_path()
            output.root.mkdir()
            lease = stack.enter_context(output.lease(f"{FETCH_OWNER} {term!r} into {output.root}"))
            identity = {"query": term, "mindate": mindate, "maxdate": maxdate, "datetype": datetype}
            if output.owner() is None:
                # A first fetch that fails before it commits an article leaves the output unbound, so
                # that the fixed command (another query, other dates) may use it: the claim is undone
                # after the transaction's cleanup (callbacks run last in, first out) and under the lease.
                stack.callback(_unclaim_unless, lambda: finished, output)
            output.check_owner({"name": FETCH_OWNER, "source": {"kind": "entrez", **identity}}, claim=True)
        docs = Documents(output.documents)
        docs.table.remove_orphans()  # a killed writer's leftovers (we hold the lease)
        done = docs.pmids()
        total, ranges = plan_ranges(
            client,
            term,
            mindate=mindate,
            maxdate=maxdate,
            datetype=datetype,
            threshold=split_threshold,
            limit=max_records,
        )
        target = total if max_records is None else min(total, max_records)
        summary = FetchSummary(total_hits=total, ranges=len(ranges), already_present=len(done))
        unavailable: set[int] = set()
        buffer: list[dict[str, Any]] = []
        txn = stack.enter_context(docs.transaction())

        def commit(rows: list[dict[str, Any]], notes: dict[str, Any] | None = None) -> None:
            lease.check()
            if rows and txn.write(rows) is not None:
                summary.shards += 1
            txn.commit(metadata={"notes": notes} if notes else None)

        bar = Progress(
            target, initial=min(len(done), target), unit="article", desc=f"fetch {term!r}", bar=progress, logger=log
        )
        with bar:
            for number, rng in enumerate(ranges, 1):
                if len(done) >= target:
                    break
                fetcher = _RangeFetcher(client, term, rng, number, len(ranges), datetype, split_threshold, max_records)
                for rows, missing in fetcher.batches(done, target, batch_size):
                    stamp = now()
                    for row in rows:
                        row["source"] = term
                        row["fetched_at"] = stamp
                    done.update(row["pmid"] for row in rows)
                    unavailable.update(missing)
                    summary.fetched += len(rows)
                    buffer.extend(rows)
                    while len(buffer) >= shard_rows:
                        commit(buffer[:shard_rows])
                        buffer = buffer[shard_rows:]
                    bar.update(len(rows))
            unavailable -= done
            notes = {
                "query": term,
                "total_hits": total,
                "ranges": [str(r) for r in ranges],
                "unavailable": sorted(unavailable),
                "last_run": now().isoformat(timespec="seconds"),
            }
            commit(buffer, notes)
        summary.rows = docs.count()
        summary.unavailable = sorted(unavailable)
        finished = True
    if unavailable:
        log.warning(
            "query %r: %d hits were not returned by efetch even by id (e.g. PMID %s); they are listed in "
            "the commit info of %s (biomine.notes) and a re-run tries them again",
            term,
            len(unavailable),
            summary.unavailable[0],
            output.documents,
        )
    return summary


def _unclaim_unless(finished: Callable[[], bool], output: JobOutput) -> None:
    if not finished():
        output.unclaim()


class _RangeFetcher:
    """Fetches the not-yet-present hits of one date range, batch by batch, in the range's id order."""

    def __init__(
        self,
        client: EutilsClient,
        term: str,
        rng: DateRange,
        number: int,
        of: int,
        datetype: str,
        threshold: int,
        max_records: int | None,
    ):
        self.client = client
        self.term = term
        self.rng = rng
        self.label = f"date range {number}/{of} ({rng})" if rng.mindate else "the search"
        want = rng.count if max_records is None else min(rng.count, max_records)
        search = client.esearch(
            term,
            mindate=rng.mindate,
            maxdate=rng.maxdate,
            datetype=datetype,
            retmax=min(want, threshold),
            what=f"esearch (ids of {self.label}) for query {term!r}",
        )
        self.search = search
        # Keep the first occurrence only: the ids define the batches and their order.
        self.ids = list(dict.fromkeys(search.ids))

    def batches(self, done: set[int], target: int, batch_size: int):
        """Yield (rows, unavailable PMIDs) per batch of ids that are not in ``done`` yet."""
        ids = self.ids
        batches = (len(ids) + batch_size - 1) // batch_size
        for index, start in enumerate(range(0, len(ids), batch_size), 1):
            room = target - len(done)
            if room <= 0:
                return
            chunk = ids[start : start + batch_size]
            wanted = [pmid for pmid in chunk if pmid not in done][:room]
            if not wanted:
                continue
            what = (
                f"efetch batch {index}/{batches} (records {start + 1}-{start + len(chunk)} of {len(ids)}) "
                f"of {self.label} for query {self.term!r}"
            )
            if len(wanted) == len(chunk) and self.search.webenv:
                rows = self.client.efetch(
                    webenv=self.search.webenv,
                    query_key=self.search.query_key,  # type: ignore[arg-type]
                    retstart=start,
                    retmax=len(chunk),
                    what=what,
                )
            else:
                rows = self.client.efetch_ids(wanted, what=what + " by id")
            by_pmid = _index_rows(rows, wanted)
            missing = [pmid for pmid in wanted if pmid not in by_pmid]
            if missing:
                # The history server's order drifted, or NCBI left records out: ask for those by id.
                log.info("%s: %d records missing from the answer; fetching them by id", what, len(missing))
                by_pmid.update(_index_rows(self.client.efetch_ids(missing, what=what + " (missing ids)"), missing))
                missing = [pmid for pmid in wanted if pmid not in by_pmid]
            yield [by_pmid[pmid] for pmid in wanted if pmid in by_pmid], missing


def _index_rows(rows: list[dict[str, Any]], wanted: list[int]) -> dict[int, dict[str, Any]]:
    wanted_set = set(wanted)
    by_pmid: dict[int, dict[str, Any]] = {}
    for row in rows:
        # Keep the highest version if a versioned citation comes more than once.
        pmid = row["pmid"]
        if pmid in wanted_set and (pmid not in by_pmid or row["version"] > by_pmid[pmid]["version"]):
            by_pmid[pmid] = row
    return by_pmid
