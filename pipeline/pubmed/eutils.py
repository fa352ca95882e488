"""NCBI E-utilities client for PubMed: esearch on the history server, efetch in batches, into the documents table.

Contract:

- :class:`EutilsClient` talks to ``{base_url}/esearch.fcgi`` and ``{base_url}/efetch.fcgi``. The base URL
  is an argument, else ``$BIOMINE_EUTILS_URL``, else NCBI's; ``Bio.Entrez`` cannot be used for the
  requests because it hard-codes NCBI's host, but it still parses esearch answers (:func:`Bio.Entrez.read`,
  DTD-validated), while efetch's PubMed XML goes through the streaming :mod:`pipeline.pubmed.parser`.
- Every request carries ``tool``, ``email`` and ``api_key`` (:meth:`Credentials.resolve`: options,
  then the job spec's ``[source]`` table, then ``$NCBI_EMAIL``/``$NCBI_API_KEY``), and waits for a
  :class:`RateLimiter` slot: 3 requests/s without a key, 10 with one, shared through a lock file by
  every process on this machine that uses the same host and key.
- Transient failures are retried with exponential backoff and jitter: HTTP 429 (honouring
  ``Retry-After``) and 5xx, timeouts, refused or dropped connections, truncated bodies, malformed XML
  and NCBI's ``<ERROR>`` answers that arrive with status 200. Other 4xx fail at once.
- :func:`fetch_query` fetches every hit of a query exactly once into an output's documents table
  (:mod:`pipeline.store.documents`, a Delta table; appends only):
  ESearch pages at most 9,999 records, so larger queries are split into publication-date ranges
  (halving until each range fits) and the per-range counts are checked against the total. Each range's
  ids come from one esearch (``usehistory=y``); batches are then fetched over the WebEnv by ``retstart``,
  checked against those ids, and ids still missing (or left over by an interrupted run) are fetched by
  POSTed id list. PMIDs already in the output are never fetched again, so a crashed or repeated run
  resumes where it stopped and a later run of the same query adds only new hits.

:raises EutilsError: a request still fails after the retries (the message names the request, e.g.
    the batch, date range and query, and the last error), a non-retryable HTTP error, a query that
    cannot be split finely enough, or missing NCBI credentials.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import http.client
import io
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from biogpt.errors import ConfigError
from pipeline.errors import EutilsError, PubmedXMLError
from pipeline.progress import Progress
from pipeline.pubmed.parser import parse_articles
from pipeline.store.documents import DEFAULT_SHARD_ROWS, Documents
from pipeline.store.lease import Lease
from pipeline.store.output import JobOutput

log = logging.getLogger(__name__)

NCBI_EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
ESEARCH_LIMIT = 9_999  # ESearch returns at most the first 9,999 records of a query
DEFAULT_BATCH_SIZE = 500
# Bounds used to split a query that has no --mindate/--maxdate: PubMed's oldest citations are from
# the 1700s, and journals date issues up to a year ahead.
EARLIEST_DATE = _dt.date(1500, 1, 1)
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

T = TypeVar("T")


# --- credentials ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What NCBI asks every client to send: a contact ``email``, a ``tool`` name, an optional ``api_key``."""

    email: str | None = None
    api_key: str | None = None
    tool: str = "biomine"

    @classmethod
    def resolve(
        cls,
        *,
        email: str | None = None,
        api_key: str | None = None,
        tool: str | None = None,
        job: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> "Credentials":
        """Options win over the job spec's values (``job``: email, api_key, tool), which win over
        ``NCBI_EMAIL``/``NCBI_API_KEY``."""
        job = job or {}
        env = os.environ if environ is None else environ
        return cls(
            email=email or job.get("email") or env.get("NCBI_EMAIL") or None,
            api_key=api_key or job.get("api_key") or env.get("NCBI_API_KEY") or None,
            tool=tool or job.get("tool") or "biomine",
        )


def load_job_credentials(path: str | os.PathLike) -> dict[str, Any]:
    """NCBI credentials from a job spec (``jobs/*.toml``, see :mod:`pipeline.run.jobspec`): the ``email``,
    ``api_key`` and ``tool`` keys of its ``[source]`` table, those that are set.

    Only these keys are read, so a job spec serves ``biomine fetch --job`` without its models existing.

    :raises ConfigError: the file is unreadable or not TOML.
    """
    path = Path(path)
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ConfigError(f"{path}: reading a TOML job spec needs Python 3.11 or later") from None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read job spec {path}: {exc}") from exc
    source = data.get("source", {})
    return {key: source[key] for key in ("email", "api_key", "tool") if source.get(key)}


# --- rate limiting --------------------------------------------------------------------------------


def default_state_dir() -> Path:
    """Where rate-limit state lives: ``$BIOMINE_CACHE_DIR``, else ``$XDG_CACHE_HOME/biomine``, else ``~/.cache/biomine``."""
    if os.environ.get("BIOMINE_CACHE_DIR"):
        return Path(os.environ["BIOMINE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "biomine"


class RateLimiter:
    """At most ``rate`` calls of :meth:`wait` per second among all holders of the same ``key``.

    With a ``state_dir`` the schedule is a file (``fcntl``-locked) holding the next free time slot,
    so separate processes (pipeline workers) share the budget; without one it is per process. Each
    caller reserves the next slot under the lock and sleeps outside it, so waiting callers do not
    serialise on the lock. Put ``state_dir`` on a shared file system to share a key across machines.
    """

    def __init__(
        self,
        rate: float,
        key: str,
        state_dir: str | os.PathLike | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._mutex = threading.Lock()
        self._next = 0.0
        self.path: Path | None = None
        if state_dir is not None:
            # The key (it may contain an API key) is hashed, never written in clear.
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            self.path = Path(state_dir) / f"eutils-rate-{digest}"
            Path(state_dir).mkdir(parents=True, exist_ok=True)

    def wait(self) -> float:
        """Sleep until this caller's slot; returns the slot (a ``clock()`` time)."""
        with self._mutex:
            now = self._clock()
            if self.path is None:
                slot = max(now, self._next)
                self._next = slot + self.interval
            else:
                slot = self._reserve_shared(now)
        if slot > now:
            self._sleep(slot - now)
        return slot

    def _reserve_shared(self, now: float) -> float:
        with open(self.path, "a+b") as f:  # type: ignore[arg-type]
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            f.seek(0)
            raw = f.read().strip()
            try:
                next_free = float(raw) if raw else 0.0
            except ValueError:
                next_free = 0.0
            slot = max(now, next_free)
            f.seek(0)
            f.truncate()
            f.write(repr(slot + self.interval).encode())
            f.flush()
        return slot


# --- the client -----------------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's requested wait, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class SearchResult:
    """An esearch answer: the hit count, the ids returned on this page, and the history-server handle."""

    count: int
    ids: list[int]
    webenv: str | None
    query_key: str | None
    translation: str | None = None


class EutilsClient:
    """Rate-limited, retrying E-utilities requests against a configurable base URL (PubMed only).

    ``rate`` defaults to NCBI's limit for the credentials (3/s, 10/s with an API key);
    ``state_dir`` (default :func:`default_state_dir`) holds the shared rate-limit schedule; ``tries``
    is the number of attempts per request; backoff before attempt n+1 is
    ``min(max_backoff, backoff * 2**(n-1))`` scaled by a random factor in [0.5, 1].

    :raises EutilsError: NCBI's own host without an email address, or with a rate above its limit.
    """

    def __init__(
        self,
        base_url: str | None = None,
        credentials: Credentials | None = None,
        *,
        rate: float | None = None,
        state_dir: str | os.PathLike | None = None,
        timeout: float = 60.0,
        tries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
    ):
        self.base_url = (base_url or os.environ.get("BIOMINE_EUTILS_URL") or NCBI_EUTILS_URL).rstrip("/") + "/"
        self.credentials = credentials or Credentials.resolve()
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        if host.endswith("ncbi.nlm.nih.gov") and not self.credentials.email:
            raise EutilsError(
                "NCBI asks every E-utilities client for a contact email: pass --email, set NCBI_EMAIL, "
                'or put email = "..." in the job spec\'s [source] table'
            )
        if tries < 1:
            raise ValueError("tries must be at least 1")
        self.timeout = timeout
        self.tries = tries
        self.backoff = backoff
        self.max_backoff = max_backoff
        allowed = 10.0 if self.credentials.api_key else 3.0
        if rate is None:
            rate = allowed
        elif rate > allowed and host.endswith("ncbi.nlm.nih.gov"):
            raise EutilsError(
                f"--rate {rate:g} exceeds NCBI's limit of {allowed:g} requests/s "
                f"{'with' if self.credentials.api_key else 'without'} an API key; NCBI answers HTTP 429 and may block "
                f"the address (an API key raises the limit to 10)"
            )
        key = f"{host}|{self.credentials.api_key or 'no-api-key'}"
        try:
            self.limiter = RateLimiter(rate, key, default_state_dir() if state_dir is None else state_dir)
        except OSError as exc:
            log.warning(
                "cannot use %s for the shared rate limit (%s); limiting this process only; set "
                "BIOMINE_CACHE_DIR to a writable directory",
                state_dir or default_state_dir(),
                exc,
            )
            self.limiter = RateLimiter(rate, key, None)
        handlers: list[urllib.request.BaseHandler] = []
        if host in _LOOPBACK:
            handlers.append(urllib.request.ProxyHandler({}))  # a loopback URL never goes through a proxy
        self._opener = urllib.request.build_opener(*handlers)

    # --- raw requests ----------------------------------------------------------------------------

    def call(
        self, utility: str, params: Mapping[str, Any], parse: Callable[[bytes], T], *, what: str, post: bool = False
    ) -> T:
        """Request ``utility`` and ``parse`` the body, retrying transient failures (see the class doc).

        ``parse`` signals a retryable bad body by raising :class:`PubmedXMLError`, ``ValueError``
        or ``RuntimeError`` (what ``Bio.Entrez.read`` raises for truncated XML and ``<ERROR>``).

        :raises EutilsError: naming ``what`` and the last error, after the last attempt or at once
            for a non-retryable HTTP status.
        """
        last: _Transient | None = None
        for attempt in range(1, self.tries + 1):
            try:
                body = self._request(utility, params, post=post, what=what)
                try:
                    return parse(body)
                except (PubmedXMLError, ValueError, RuntimeError) as exc:
                    raise _Transient(f"unusable response: {exc}") from exc
            except _Transient as exc:
                last = exc
            if attempt == self.tries:
                break
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if last.retry_after is not None:
                delay = max(delay, min(last.retry_after, self.max_backoff))
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.2fs", what, attempt, self.tries, last, delay)
            time.sleep(delay)
        raise EutilsError(
            f"{what} failed after {self.tries} attempts; last error: {last}. Completed shards are kept: "
            f"re-run the same command to resume (check the E-utilities URL {self.base_url} (--eutils-url, or eutils_url in the job's [source]) and the network, or "
            f"try again later if NCBI is overloaded)"
        )

    def _request(self, utility: str, params: Mapping[str, Any], *, post: bool, what: str) -> bytes:
        creds = self.credentials
        full = {**params, "tool": creds.tool, "email": creds.email, "api_key": creds.api_key}
        data = urllib.parse.urlencode({k: v for k, v in full.items() if v is not None})
        url = f"{self.base_url}{utility}.fcgi"
        headers = {"User-Agent": f"biomine ({creds.tool}; {creds.email or 'no email'})"}
        if post:
            # NCBI's advice for long id lists: POST them, a GET URL is limited in length.
            request = urllib.request.Request(url, data=data.encode(), headers=headers, method="POST")
        else:
            request = urllib.request.Request(f"{url}?{data}", headers=headers)
        self.limiter.wait()
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_excerpt(exc)
            if exc.code == 429 or exc.code >= 500:
                raise _Transient(f"HTTP {exc.code} {exc.reason}{detail}", _retry_after(exc.headers)) from exc
            raise EutilsError(
                f"{what}: HTTP {exc.code} {exc.reason}{detail} from {url}; this is not retried: check the "
                f"query syntax, the API key and the E-utilities URL (--eutils-url, or eutils_url in the job's [source])"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            # OSError covers URLError (refused, DNS), timeouts, resets and TLS errors.
            reason = getattr(exc, "reason", None) or exc
            if isinstance(exc, http.client.IncompleteRead):
                reason = f"connection dropped after {len(exc.partial)} bytes of the body"
            raise _Transient(f"{type(exc).__name__}: {reason}") from exc

    # --- E-utilities -----------------------------------------------------------------------------

    def esearch(
        self,
        term: str,
        *,
        mindate: str | None = None,
        maxdate: str | None = None,
        datetype: str = "pdat",
        retmax: int = 0,
        retstart: int = 0,
        usehistory: bool = True,
        what: str | None = None,
    ) -> SearchResult:
        """One esearch request on PubMed; dates are ``YYYY/MM/DD`` strings, both or neither.

        :raises EutilsError: after retries (an ``<ERROR>`` answer is quoted in the message).
        """
        params: dict[str, Any] = {"db": "pubmed", "term": term, "retmax": retmax, "retstart": retstart}
        if usehistory:
            params["usehistory"] = "y"
        if mindate or maxdate:
            params.update(datetype=datetype, mindate=mindate, maxdate=maxdate)
        what = what or f"esearch for query {term!r}" + (f" in {mindate}-{maxdate}" if mindate else "")
        return self.call("esearch", params, _parse_esearch, what=what)

    def efetch(self, *, webenv: str, query_key: str, retstart: int, retmax: int, what: str) -> list[dict[str, Any]]:
        """PubMed XML records ``retstart .. retstart+retmax-1`` of a history-server result, parsed."""
        params = {
            "db": "pubmed",
            "WebEnv": webenv,
            "query_key": query_key,
            "retstart": retstart,
            "retmax": retmax,
            "retmode": "xml",
        }
        return self.call("efetch", params, _parse_efetch, what=what)

    def efetch_ids(self, ids: list[int], *, what: str) -> list[dict[str, Any]]:
        """PubMed XML records of the given PMIDs (POSTed), parsed."""
        params = {"db": "pubmed", "id": ",".join(map(str, ids)), "retmode": "xml"}
        return self.call("efetch", params, _parse_efetch, what=what, post=True)


def _parse_efetch(body: bytes) -> list[dict[str, Any]]:
    # All-or-nothing: parse_articles reads the whole answer, so a truncated one yields no rows.
    return parse_articles(body, "efetch answer")


def _parse_esearch(body: bytes) -> SearchResult:
    from Bio import Entrez

    # Entrez.read validates against the esearch DTD that Biopython ships and raises RuntimeError
    # with the text of an <ERROR> element, which NCBI sends with status 200.
    record = Entrez.read(io.BytesIO(body))
    if "Count" not in record:
        raise ValueError("esearch answer without Count")
    return SearchResult(
        count=int(record["Count"]),
        ids=[int(i) for i in record.get("IdList", [])],
        webenv=record.get("WebEnv"),
        query_key=record.get("QueryKey"),
        translation=record.get("QueryTranslation"),
    )


def _error_excerpt(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(300).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""
    return f": {' '.join(text.split())[:200]}" if text else ""


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the exponential backoff applies instead


# --- dates and query splitting --------------------------------------------------------------------


def parse_date(text: str | None, *, end: bool, flag: str = "date") -> _dt.date | None:
    """``YYYY``, ``YYYY/MM`` or ``YYYY/MM/DD`` (``-`` also accepted) as a date: the period's first day,
    or its last when ``end``.

    :raises EutilsError: not such a date (``flag`` names the option in the message).
    """
    if text is None:
        return None
    parts = text.replace("-", "/").split("/")
    try:
        numbers = [int(p) for p in parts]
        if len(numbers) == 1:
            return _dt.date(numbers[0], 12, 31) if end else _dt.date(numbers[0], 1, 1)
        if len(numbers) == 2:
            year, month = numbers
            if not end:
                return _dt.date(year, month, 1)
            following = _dt.date(year + month // 12, month % 12 + 1, 1)
            return following - _dt.timedelta(days=1)
        if len(numbers) == 3:
            return _dt.date(*numbers)
    except ValueError:
        pass
    raise EutilsError(f"{flag} {text!r} is not a date: use YYYY, YYYY/MM or YYYY/MM/DD")


def _fmt(day: _dt.date) -> str:
    return f"{day.year:04d}/{day.month:02d}/{day.day:02d}"


@dataclass(frozen=True)
class DateRange:
    """A publication-date range of a query (``None`` bounds: the query is not date-restricted) and its hit count."""

    mindate: str | None
    maxdate: str | None
    count: int

    def __str__(self) -> str:
        return f"{self.mindate}-{self.maxdate}" if self.mindate else "all dates"


def plan_ranges(
    client: EutilsClient,
    term: str,
    *,
    mindate: str | None = None,
    maxdate: str | None = None,
    datetype: str = "pdat",
    threshold: int = ESEARCH_LIMIT,
    limit: int | None = None,
) -> tuple[int, list[DateRange]]:
    """Split a query into date ranges of at most ``threshold`` hits each; returns (total, ranges).

    Ranges are disjoint, inclusive, newest first. A query that fits (or whose ``limit`` fits) is one
    range. A record can match two ranges (PubMed's publication date covers both the print and the
    electronic date), so the counts may add up to more than the total, never less.

    :raises EutilsError: a single day has more hits than ``threshold``, or the ranges miss hits.
    """
    lo = parse_date(mindate, end=False, flag="--mindate")
    hi = parse_date(maxdate, end=True, flag="--maxdate")
    if lo and hi and lo > hi:
        raise EutilsError(f"--mindate {mindate} is after --maxdate {maxdate}")
    if lo or hi:
        lo = lo or EARLIEST_DATE
        hi = hi or _dt.date(_dt.date.today().year + 1, 12, 31)
    bounds = (_fmt(lo), _fmt(hi)) if lo and hi else (None, None)
    # Counting needs no history-server entry (usehistory=False); the fetch step makes its own.
    total = client.esearch(term, mindate=bounds[0], maxdate=bounds[1], datetype=datetype, usehistory=False).count
    if total <= threshold or (limit is not None and limit <= threshold):
        return total, [DateRange(bounds[0], bounds[1], total)]

    lo = lo or EARLIEST_DATE
    hi = hi or _dt.date(_dt.date.today().year + 1, 12, 31)
    counted = total if bounds[0] else None
    leaves: list[DateRange] = []
    # Depth-first, newer half first, so leaves come out newest first (PubMed's default order).
    stack: list[tuple[_dt.date, _dt.date, int | None]] = [(lo, hi, counted)]
    while stack:
        start, stop, count = stack.pop()
        if count is None:
            count = client.esearch(
                term, mindate=_fmt(start), maxdate=_fmt(stop), datetype=datetype, usehistory=False
            ).count
        if count == 0:
            continue
        if count <= threshold:
            leaves.append(DateRange(_fmt(start), _fmt(stop), count))
            continue
        if start == stop:
            raise EutilsError(
                f"query {term!r} has {count} hits dated {_fmt(start)} alone, more than E-utilities can page "
                f"({threshold}); narrow the query (e.g. AND a journal or MeSH term) or use the baseline files "
                f"with `biomine ingest`"
            )
        middle = start + (stop - start) // 2
        stack.append((start, middle, None))
        stack.append((middle + _dt.timedelta(days=1), stop, None))
    covered = sum(r.count for r in leaves)
    if covered < total:
        raise EutilsError(
            f"query {term!r}: the date ranges {_fmt(lo)}-{_fmt(hi)} hold {covered} of its {total} hits, so "
            f"{total - covered} would be missed; pass --mindate/--maxdate that cover every hit (or re-run if "
            f"PubMed changed meanwhile)"
        )
    log.info("query %r: %d hits split into %d date ranges", term, total, len(leaves))
    return total, leaves


# --- fetching a query into shards -------------------------------------------------------------------


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
    lease; else this takes it and records the output as this query's.

    :raises EutilsError: see the module docstring.
    :raises StoreError: ``out`` holds another query's output or is in use.
    """
    if batch_size < 1 or split_threshold < 1:
        raise ValueError("batch_size and split_threshold must be positive")
    if max_records is not None and max_records < 0:
        raise EutilsError("--max must be zero or more")
    now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
    output = out if isinstance(out, JobOutput) else JobOutput(out)
    with contextlib.ExitStack() as stack:
        if lease is None:
            output.refuse_table_path("biomine fetch")
            output.root.mkdir()
            lease = stack.enter_context(output.lease(f"biomine fetch {term!r} into {output.root}"))
            identity = {"query": term, "mindate": mindate, "maxdate": maxdate, "datetype": datetype}
            output.check_owner({"name": "biomine fetch", "source": {"kind": "entrez", **identity}}, claim=True)
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
