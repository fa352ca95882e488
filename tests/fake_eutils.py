"""A loopback fake of NCBI E-utilities (esearch, efetch) for the tests, with scriptable faults.

Contract:

- :class:`FakeEutils` is a real HTTP server (``ThreadingHTTPServer`` on 127.0.0.1, port 0) serving
  ``esearch.fcgi`` and ``efetch.fcgi`` under ``/eutils/`` the way NCBI does: esearch answers carry
  the DOCTYPE NCBI sends (so ``Bio.Entrez.read`` validates them offline), ``usehistory=y`` stores
  the result under a WebEnv/query_key, efetch serves a history result by ``retstart``/``retmax`` or
  an ``id`` list (GET or POST) as a ``PubmedArticleSet``. Like PubMed, neither pages past
  ``limit`` records (9,999 by default): the answer is a status-200 ``<ERROR>``.
- The corpus is scripted: :meth:`FakeEutils.add_query` maps a query term to articles
  (PMID, publication date, PubMed XML of the ``PubmedArticle``, e.g. from :func:`article_xml`).
  ``mindate``/``maxdate`` filter on those dates; results are ordered newest first.
- Faults (:meth:`FakeEutils.fail`) are consumed in order by the requests they match: an HTTP error
  status (429 comes with ``Retry-After: 0``), a connection dropped mid-body, malformed XML, an
  ``<ERROR>`` with status 200, a stall (for client timeouts) or any raw body. PMIDs in
  :attr:`FakeEutils.withheld` are never returned by efetch (as NCBI sometimes does).
- Every request is logged (:attr:`FakeEutils.requests`). The server is bounded: it stops itself after
  ``lifetime`` seconds, and each connection times out; use it as a context manager.
"""

from __future__ import annotations

import datetime as dt
import html
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

ESEARCH_DOCTYPE = (
    '<?xml version="1.0" encoding="UTF-8" ?>\n'
    '<!DOCTYPE eSearchResult PUBLIC "-//NLM//DTD esearch 20060628//EN" '
    '"https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20060628/esearch.dtd">\n'
)
PUBMED_DOCTYPE = (
    '<?xml version="1.0" ?>\n'
    '<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" '
    '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">\n'
)
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def article_xml(
    pmid: int,
    date: dt.date = dt.date(2020, 1, 15),
    *,
    title: str | None = None,
    abstract: str | list[tuple[str, str, str]] | None = "",
    version: int = 1,
    authors: list[tuple[str, str]] | None = None,
    collective: str | None = None,
    pub_date_xml: str | None = None,
    mesh: list[tuple[str, str, bool]] | None = None,
    doi: str | None = None,
    pmc: str | None = None,
    keywords: list[str] | None = None,
    language: str = "eng",
    extra_citation_xml: str = "",
) -> str:
    """A realistic ``<PubmedArticle>`` (as efetch and the baseline files have it).

    ``title`` and ``abstract`` are inserted as XML (so they may hold inline markup; escape plain text
    with :func:`html.escape`). ``abstract`` is text, a list of (label, NlmCategory, text) sections,
    ``""`` for a default sentence, or None for no abstract. ``pub_date_xml`` replaces the
    ``<PubDate>`` contents (e.g. a ``<MedlineDate>``).
    """
    title = title if title is not None else f"Article {pmid} on drug interactions."
    if abstract == "":
        abstract = f"Abstract of article {pmid}: warfarin and aspirin were studied."
    if abstract is None:
        abstract_xml = ""
    elif isinstance(abstract, str):
        abstract_xml = f"<Abstract><AbstractText>{abstract}</AbstractText></Abstract>"
    else:
        parts = "".join(
            f'<AbstractText Label="{label}" NlmCategory="{cat}">{text}</AbstractText>' for label, cat, text in abstract
        )
        abstract_xml = f"<Abstract>{parts}<CopyrightInformation>© The authors.</CopyrightInformation></Abstract>"
    pub_date = (
        pub_date_xml or f"<Year>{date.year}</Year><Month>{_MONTHS[date.month - 1]}</Month><Day>{date.day:02d}</Day>"
    )
    people = "".join(
        f'<Author ValidYN="Y"><LastName>{last}</LastName><ForeName>{fore}</ForeName><Initials>{fore[:1]}</Initials>'
        f"<AffiliationInfo><Affiliation>Dept. of Pharmacology, Univ. {last}.</Affiliation></AffiliationInfo></Author>"
        for last, fore in (authors if authors is not None else [("Smith", "Jane"), ("Nguyễn", "Văn An")])
    )
    if collective:
        people += f'<Author ValidYN="Y"><CollectiveName>{collective}</CollectiveName></Author>'
    author_list = f'<AuthorList CompleteYN="Y">{people}</AuthorList>' if people else ""
    mesh_xml = ""
    if mesh:
        mesh_xml = (
            "<MeshHeadingList>"
            + "".join(
                f'<MeshHeading><DescriptorName UI="{ui}" MajorTopicYN="{"Y" if major else "N"}">{name}</DescriptorName></MeshHeading>'
                for name, ui, major in mesh
            )
            + "</MeshHeadingList>"
        )
    keyword_xml = ""
    if keywords:
        keyword_xml = (
            '<KeywordList Owner="NOTNLM">'
            + "".join(f'<Keyword MajorTopicYN="N">{k}</Keyword>' for k in keywords)
            + "</KeywordList>"
        )
    ids = f'<ArticleId IdType="pubmed">{pmid}</ArticleId>'
    if doi:
        ids += f'<ArticleId IdType="doi">{doi}</ArticleId>'
    if pmc:
        ids += f'<ArticleId IdType="pmc">{pmc}</ArticleId>'
    return (
        f'<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM"><PMID Version="{version}">{pmid}</PMID>'
        f"<DateRevised><Year>2024</Year><Month>01</Month><Day>02</Day></DateRevised>"
        f'<Article PubModel="Print-Electronic"><Journal><ISSN IssnType="Electronic">1234-5678</ISSN>'
        f'<JournalIssue CitedMedium="Internet"><Volume>12</Volume><Issue>3</Issue><PubDate>{pub_date}</PubDate></JournalIssue>'
        f"<Title>Journal of Clinical Pharmacology</Title><ISOAbbreviation>J Clin Pharmacol</ISOAbbreviation></Journal>"
        f"<ArticleTitle>{title}</ArticleTitle><Pagination><MedlinePgn>1-9</MedlinePgn></Pagination>"
        f"{abstract_xml}{author_list}<Language>{language}</Language>"
        f'<PublicationTypeList><PublicationType UI="D016428">Journal Article</PublicationType></PublicationTypeList>'
        f"</Article><MedlineJournalInfo><Country>United States</Country><MedlineTA>J Clin Pharmacol</MedlineTA>"
        f"<NlmUniqueID>0366372</NlmUniqueID></MedlineJournalInfo>"
        f'<CommentsCorrectionsList><CommentsCorrections RefType="Cites"><RefSource>Other J. 2001</RefSource>'
        f'<PMID Version="1">{pmid + 7_000_000}</PMID></CommentsCorrections></CommentsCorrectionsList>'
        f"{mesh_xml}{keyword_xml}{extra_citation_xml}</MedlineCitation>"
        f'<PubmedData><History><PubMedPubDate PubStatus="entrez"><Year>{date.year}</Year><Month>{date.month}</Month>'
        f"<Day>{date.day}</Day></PubMedPubDate></History><PublicationStatus>ppublish</PublicationStatus>"
        f"<ArticleIdList>{ids}</ArticleIdList>"
        f"<ReferenceList><Reference><Citation>A cited work.</Citation><ArticleIdList>"
        f'<ArticleId IdType="doi">10.9999/not-this-{pmid}</ArticleId></ArticleIdList></Reference></ReferenceList>'
        f"</PubmedData></PubmedArticle>"
    )


def pubmed_document(articles: list[str], deletions: list[int] | None = None) -> str:
    """A ``PubmedArticleSet`` (efetch answer or baseline/update file) of the given article XML."""
    deleted = ""
    if deletions:
        deleted = "<DeleteCitation>" + "".join(f'<PMID Version="1">{p}</PMID>' for p in deletions) + "</DeleteCitation>"
    return PUBMED_DOCTYPE + "<PubmedArticleSet>\n" + "\n".join(articles) + deleted + "\n</PubmedArticleSet>\n"


@dataclass
class Fault:
    """``kind`` happens to the next ``times`` requests of ``utility`` for which ``when(params)`` holds."""

    utility: str
    kind: str  # an HTTP status ("429", "500", "400", ...) | drop | malformed | error | stall | body
    times: float = 1
    when: Callable[[dict[str, str]], bool] | None = None
    body: bytes = b""
    delay: float = 0.0
    hits: int = 0


@dataclass
class _Article:
    pmid: int
    date: dt.date
    xml: str


@dataclass
class Request:
    utility: str
    method: str
    params: dict[str, str]
    time: float
    fault: str | None = None


@dataclass
class FakeEutils:
    """The fake server; ``url`` is its E-utilities base URL once started."""

    limit: int = 9_999
    lifetime: float = 120.0
    queries: dict[str, list[_Article]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    withheld: set[int] = field(default_factory=set)

    def __post_init__(self):
        self._articles: dict[int, str] = {}
        self._history: dict[tuple[str, str], list[int]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # --- scripting -------------------------------------------------------------------------------

    def add_query(self, term: str, articles: list[tuple[int, dt.date, str]]) -> None:
        """Make ``term`` match these (pmid, publication date, PubmedArticle XML) records."""
        self.queries[term] = [_Article(*a) for a in articles]
        for pmid, _, xml in articles:
            self._articles[pmid] = xml

    def fail(
        self, utility: str, kind: str, times: float = 1, when=None, body: bytes = b"", delay: float = 0.0
    ) -> Fault:
        fault = Fault(utility, kind, times, when, body, delay)
        self.faults.append(fault)
        return fault

    def requests_for(self, utility: str) -> list[Request]:
        return [r for r in self.requests if r.utility == utility]

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "FakeEutils":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}/eutils/"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        # Bounded: a test that forgets to stop the server (or hangs) does not leave it running.
        self._reaper = threading.Timer(self.lifetime, self.stop)
        self._reaper.daemon = True
        self._reaper.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._reaper.cancel()
            server.shutdown()
            server.server_close()

    # --- behaviour -------------------------------------------------------------------------------

    def _take_fault(self, utility: str, params: dict[str, str]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.utility == utility and fault.hits < fault.times and (fault.when is None or fault.when(params)):
                    fault.hits += 1
                    return fault
        return None

    def _results(self, params: dict[str, str]) -> list[int]:
        hits = self.queries.get(params.get("term", ""), [])
        lo, hi = params.get("mindate"), params.get("maxdate")
        if lo or hi:
            lo_d = _date(lo, end=False) if lo else dt.date.min
            hi_d = _date(hi, end=True) if hi else dt.date.max
            hits = [a for a in hits if lo_d <= a.date <= hi_d]
        return [a.pmid for a in sorted(hits, key=lambda a: (a.date, a.pmid), reverse=True)]

    def esearch(self, params: dict[str, str]) -> str:
        ids = self._results(params)
        retstart, retmax = int(params.get("retstart", 0)), int(params.get("retmax", 20))
        if retstart > self.limit - 1:
            return ESEARCH_DOCTYPE + (
                f"<eSearchResult><ERROR>Search Backend failed: Exception:\n'retstart' cannot be larger than "
                f"{self.limit - 1}. For PubMed, ESearch can only retrieve the first {self.limit} records matching "
                f"the query. To obtain more results, you may consider using EDirect.</ERROR></eSearchResult>"
            )
        page = ids[retstart : min(retstart + retmax, self.limit)]
        history = ""
        if params.get("usehistory") == "y":
            with self._lock:
                webenv = f"MCID_{len(self._history) + 1:024x}"
                self._history[(webenv, "1")] = ids
            history = f"<QueryKey>1</QueryKey><WebEnv>{webenv}</WebEnv>"
        term = html.escape(params.get("term", ""))
        id_list = "".join(f"<Id>{i}</Id>\n" for i in page)
        return ESEARCH_DOCTYPE + (
            f"<eSearchResult><Count>{len(ids)}</Count><RetMax>{len(page)}</RetMax><RetStart>{retstart}</RetStart>"
            f"{history}<IdList>\n{id_list}</IdList><TranslationSet/>"
            f"<QueryTranslation>{term}[All Fields]</QueryTranslation></eSearchResult>\n"
        )

    def efetch(self, params: dict[str, str]) -> str:
        if "id" in params:
            ids = [int(i) for i in params["id"].split(",") if i.strip()]
        else:
            key = (params.get("WebEnv", ""), params.get("query_key", ""))
            if key not in self._history:
                return "<eFetchResult><ERROR>Cannot retrieve history data. query_key: 1, WebEnv: unknown</ERROR></eFetchResult>"
            retstart, retmax = int(params.get("retstart", 0)), int(params.get("retmax", 20))
            if retstart + retmax > self.limit:
                return (
                    f"<eFetchResult><ERROR>Search Backend failed: 'retstart' cannot be larger than "
                    f"{self.limit - 1}</ERROR></eFetchResult>"
                )
            ids = self._history[key][retstart : retstart + retmax]
        return pubmed_document([self._articles[i] for i in ids if i in self._articles and i not in self.withheld])


def _date(text: str, end: bool) -> dt.date:
    parts = [int(p) for p in text.replace("-", "/").split("/")]
    if len(parts) == 3:
        return dt.date(*parts)
    if len(parts) == 2:
        if not end:
            return dt.date(parts[0], parts[1], 1)
        following = dt.date(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1)
        return following - dt.timedelta(days=1)
    return dt.date(parts[0], 12, 31) if end else dt.date(parts[0], 1, 1)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeEutils
    timeout = 10  # seconds a connection may idle: keeps a stuck client from holding a thread forever
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self._serve(url.path, urllib.parse.parse_qs(url.query))

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length).decode()
        params = urllib.parse.parse_qs(url.query)
        params.update(urllib.parse.parse_qs(body))
        self._serve(url.path, params)

    def _serve(self, path: str, raw: dict[str, list[str]]) -> None:
        fake = self.fake
        params = {k: v[-1] for k, v in raw.items()}
        utility = path.rsplit("/", 1)[-1].removesuffix(".fcgi")
        fault = fake._take_fault(utility, params)
        with fake._lock:
            fake.requests.append(Request(utility, self.command, params, time.time(), fault.kind if fault else None))
        if utility not in ("esearch", "efetch"):
            return self._send(404, b"unknown utility")
        if fault is not None:
            if fault.kind.isdigit():
                if fault.kind == "429":  # what NCBI sends over the rate limit
                    return self._send(429, b'{"error":"API rate limit exceeded","count":"11"}', {"Retry-After": "0"})
                return self._send(int(fault.kind), f"Error {fault.kind} from the fake".encode())
            if fault.kind == "stall":
                time.sleep(fault.delay)
            elif fault.kind == "body":
                return self._send(200, fault.body)
            elif fault.kind == "error":
                root = "eSearchResult" if utility == "esearch" else "eFetchResult"
                doc = (
                    ESEARCH_DOCTYPE if utility == "esearch" else ""
                ) + f"<{root}><ERROR>Search Backend failed: temporary</ERROR></{root}>"
                return self._send(200, doc.encode())
        body = (fake.esearch(params) if utility == "esearch" else fake.efetch(params)).encode("utf-8")
        if fault is not None and fault.kind == "malformed":
            # Well-formed start, then an unclosed element and garbage: what a broken proxy produces.
            return self._send(200, body[: len(body) // 2] + b"<Abstract><AbstractText>\x00&&</Article>")
        if fault is not None and fault.kind == "drop":
            # Promise the whole body, send half, hang up.
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        return self._send(200, body)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/xml; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
