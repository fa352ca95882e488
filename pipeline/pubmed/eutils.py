"""NCBI E-utilities client for PubMed: rate-limited, retrying esearch and efetch, and query date ranges.

Contract:

- :class:`EutilsClient` talks to ``{base_url}/esearch.fcgi`` and ``{base_url}/efetch.fcgi``. The base URL
  is an argument, else ``$BIOMINE_EUTILS_URL``, else NCBI's; ``Bio.Entrez`` cannot be used for the
  requests because it hard-codes NCBI's host, but it still parses esearch answers (:func:`Bio.Entrez.read`,
  DTD-validated), while efetch's PubMed XML goes through the streaming :mod:`pipeline.pubmed.parser`.
- Every request carries ``tool``, ``email`` and ``api_key`` (:meth:`Credentials.resolve`: the
  caller's values, then those of a job (its ``[source]`` table, read by the job parser), then
  ``$NCBI_EMAIL``/``$NCBI_API_KEY``), and waits for a :class:`RateLimiter` slot: 3 requests/s without
  a key, 10 with one, shared through a lock file by every process on this machine that uses the same
  host and key.
- Transient failures are retried with exponential backoff and jitter: HTTP 429 (honouring
  ``Retry-After``) and 5xx, timeouts, refused or dropped connections, truncated bodies, malformed XML
  and NCBI's ``<ERROR>`` answers that arrive with status 200. Other 4xx fail at once.
- Dates: one grammar, ``YYYY``, ``YYYY/MM`` or ``YYYY/MM/DD`` (:func:`date_problem`, :func:`parse_date`,
  :func:`date_range`), which a job file's ``mindate``/``maxdate`` follow too. ESearch pages at most
  9,999 records, so :func:`plan_ranges` splits a larger query into publication-date ranges (halving
  until each range fits) and checks the per-range counts against the total.
- Fetching a query into an output's documents is :mod:`pipeline.pubmed.fetch`.

:raises EutilsError: a request still fails after the retries (the message names the request, e.g.
    the batch, date range and query, and the last error), a non-retryable HTTP error, a query that
    cannot be split finely enough, a date that is not one, or missing NCBI credentials. Its
    ``setting`` names what the caller set that the fix changes (``"email"``, ``"eutils_url"``,
    ``"mindate"``, ...): see :mod:`pipeline.errors`.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import http.client
import io
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from pipeline.errors import EutilsError, PubmedXMLError
from pipeline.pubmed.parser import parse_articles

log = logging.getLogger(__name__)

NCBI_EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
ESEARCH_LIMIT = 9_999  # ESearch returns at most the first 9,999 records of a query
DEFAULT_BATCH_SIZE = 500
# Bounds used to split a query that has no mindate/maxdate: PubMed's oldest citations are from
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
        """The caller's values win over a job's (``job``: its ``email``, ``api_key``, ``tool``), which
        win over ``NCBI_EMAIL``/``NCBI_API_KEY``."""
        job = job or {}
        env = os.environ if environ is None else environ
        return cls(
            email=email or job.get("email") or env.get("NCBI_EMAIL") or None,
            api_key=api_key or job.get("api_key") or env.get("NCBI_API_KEY") or None,
            tool=tool or job.get("tool") or "biomine",
        )


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
                f"no contact email for NCBI, which asks every E-utilities client ({self.base_url}) for one: "
                "give an email address, or set NCBI_EMAIL",
                setting="email",
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
                f"a rate of {rate:g} requests/s exceeds NCBI's limit of {allowed:g} "
                f"{'with' if self.credentials.api_key else 'without'} an API key; NCBI answers HTTP 429 and may block "
                f"the address: give a rate of {allowed:g} or less (an API key raises the limit to 10)",
                setting="rate",
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
            f"{what} failed after {self.tries} attempts; last error: {last}. What was committed is kept and a "
            f"re-run resumes (check the E-utilities URL {self.base_url} and the network, or try again later if "
            "NCBI is overloaded)",
            setting="eutils_url",
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
                f"query syntax, the API key and the E-utilities URL {self.base_url}",
                setting=("query", "api_key", "eutils_url"),
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


#: The one date grammar of queries, job files and the fetch command.
DATE_GRAMMAR = "YYYY, YYYY/MM or YYYY/MM/DD"
_DATE = re.compile(r"(\d{4})(?:/(\d{1,2})(?:/(\d{1,2}))?)?")


def date_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a date of the grammar (``YYYY``, ``YYYY/MM`` or ``YYYY/MM/DD``);
    None when it is one. A job parser prefixes the key, :func:`parse_date` the setting."""
    m = _DATE.fullmatch(text.strip())
    if not m:
        return f"use {DATE_GRAMMAR} (e.g. 2020/01/31)"
    try:
        _dt.date(int(m[1]), int(m[2] or 1), int(m[3] or 1))
    except ValueError as exc:
        return f"not a calendar date ({exc})"
    return None


def parse_date(text: str | None, *, end: bool, setting: str = "date") -> _dt.date | None:
    """``YYYY``, ``YYYY/MM`` or ``YYYY/MM/DD`` as a date: the period's first day, or its last when ``end``.

    :raises EutilsError: not such a date (``setting`` names it in the message and on the error).
    """
    if text is None:
        return None
    problem = date_problem(text)
    if problem:
        raise EutilsError(f"{setting} {text!r} is not a date: {problem}", setting=setting)
    m = _DATE.fullmatch(text.strip())
    assert m is not None  # date_problem said it matches
    year, month, day = int(m[1]), int(m[2] or 0), int(m[3] or 0)  # 0: not given (a real one is >= 1)
    if day:
        return _dt.date(year, month, day)
    if month:
        if not end:
            return _dt.date(year, month, 1)
        following = _dt.date(year + month // 12, month % 12 + 1, 1)
        return following - _dt.timedelta(days=1)
    return _dt.date(year, 12, 31) if end else _dt.date(year, 1, 1)


def date_range(mindate: str | None, maxdate: str | None) -> tuple[_dt.date | None, _dt.date | None]:
    """The first day of ``mindate``'s period and the last of ``maxdate``'s (None where not given).

    :raises EutilsError: a bound that is not a date (``setting`` ``"mindate"`` or ``"maxdate"``), or
        ``mindate`` after ``maxdate`` (both).
    """
    lo = parse_date(mindate, end=False, setting="mindate")
    hi = parse_date(maxdate, end=True, setting="maxdate")
    if lo and hi and lo > hi:
        raise EutilsError(f"mindate {mindate} is after maxdate {maxdate}", setting=("mindate", "maxdate"))
    return lo, hi


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

    :raises EutilsError: a bad date (see :func:`date_range`), a single day has more hits than
        ``threshold``, or the ranges miss hits.
    """
    lo, hi = date_range(mindate, maxdate)
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
                f"({threshold}); narrow the query (e.g. AND a journal or MeSH term) or ingest PubMed's baseline "
                "files instead",
                setting="query",
            )
        middle = start + (stop - start) // 2
        stack.append((start, middle, None))
        stack.append((middle + _dt.timedelta(days=1), stop, None))
    covered = sum(r.count for r in leaves)
    if covered < total:
        raise EutilsError(
            f"query {term!r}: the date ranges {_fmt(lo)}-{_fmt(hi)} hold {covered} of its {total} hits, so "
            f"{total - covered} would be missed; give a mindate and maxdate that cover every hit (or re-run if "
            f"PubMed changed meanwhile)",
            setting=("mindate", "maxdate"),
        )
    log.info("query %r: %d hits split into %d date ranges", term, total, len(leaves))
    return total, leaves
