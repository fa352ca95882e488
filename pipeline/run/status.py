"""Where a job's output stands: ``biomine status OUT`` (for people, and ``--json`` for monitoring).

Everything comes from the output itself, read-only and without taking its lease, so a status can be
asked for while a run is writing:

- **the last run** and the last finished one: the ``runs`` table (:mod:`schemas.runs`): when, the
  outcome (``finished``, ``failed``, ``interrupted``; ``started`` with no end is a run in progress,
  or one that was killed), how long, and per stage what it computed, kept and copied;
- **the tables**: each Delta table's version, live rows and data files, from its log only (no data
  file is read);
- **the newest input**: the last PubMed file applied to the documents table (the ``inputs`` of its
  commits) and how many were applied in all;
- **the mirror** (a ``pubmed`` job, given its job file): the newest file its last sync saw on the
  mirror, and how many files the corpus is behind it (:func:`pipeline.pubmed.sync.mirror_status`;
  from ``dest/_sync.json``, no request to the mirror);
- **the lease**: whether a run holds the output now, as a writer would count it
  (:meth:`pipeline.store.lease.Lease.holder`);
- **the schedule** (the job's ``[job] schedule``, from the job file when given, else as the last run
  recorded it): a run is *due* one period after the last finished run started, and *overdue* a
  quarter of a period after that (so a cron-started run that is still working, or starting late,
  is not an alarm). ``once`` is never due again after it finished.

:raises StoreError: ``OUT`` holds no biomine output, or a table or the lease cannot be read.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import StoreError
from pipeline.run.jobspec import SCHEDULES
from pipeline.store.output import JobOutput
from pipeline.store.tables import Table

#: How long after the last finished run started the next one is due. A month is a calendar month.
PERIODS: dict[str, _dt.timedelta | None] = {
    "once": None,
    "hourly": _dt.timedelta(hours=1),
    "daily": _dt.timedelta(days=1),
    "weekly": _dt.timedelta(days=7),
    "monthly": None,  # calendar months: see next_due
}
assert set(PERIODS) == set(SCHEDULES), "a schedule of pipeline.run.jobspec has no period here"
#: Overdue once this share of a period has passed after the run was due.
GRACE = 0.25
#: Commits of the documents table searched for the newest applied input (newest first).
_HISTORY = 500


@dataclass(frozen=True)
class TableStatus:
    version: int
    rows: int
    files: int


@dataclass(frozen=True)
class RunStatus:
    """One run as the ``runs`` table records it (its newest event)."""

    run_id: str
    outcome: str  # finished | failed | interrupted | running (a started event with no end yet)
    started_at: str | None
    ended_at: str | None
    seconds: float | None
    #: Per stage: what it computed (``done``), kept and copied, and its failures; documents: the input side.
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ScheduleStatus:
    schedule: str
    state: str  # not due | due | overdue | done (once, finished) | never run
    next_due: str | None
    overdue_after: str | None


@dataclass(frozen=True)
class OutputStatus:
    output: str
    job: str | None
    source: str | None
    checked_at: str
    last_run: RunStatus | None
    last_finished: RunStatus | None
    tables: dict[str, TableStatus]
    newest_input: dict[str, Any] | None
    inputs_applied: int
    lease: dict[str, Any] | None
    schedule: ScheduleStatus | None
    mirror: dict[str, Any] | None = None

    @property
    def needs_attention(self) -> list[str]:
        """What a monitor should alert on (empty: all is well)."""
        out = []
        if self.last_run is not None and self.last_run.outcome in ("failed", "interrupted"):
            out.append(f"the last run {self.last_run.outcome}")
        if self.last_run is not None and self.last_run.outcome == "running" and self.lease is None:
            out.append("the last run started but never ended, and no run holds the output (it was killed)")
        if self.schedule is not None and self.schedule.state == "overdue":
            out.append(f"the {self.schedule.schedule} run is overdue (due {self.schedule.next_due})")
        if self.last_finished is not None and self.last_finished.failures:
            out.append(f"{self.last_finished.failures} documents failed in the last finished run")
        return out

    def as_json(self) -> str:
        return json.dumps({**asdict(self), "needs_attention": self.needs_attention}, indent=1, default=str)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")
    return str(value)


def _stages(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, s in (record.get("stages") or {}).items():
        keys: tuple[str, ...]
        if name == "documents":
            keys = ("kind", "files", "files_skipped", "added", "replaced", "deleted", "dropped", "documents", "live")
        elif name == "kb":
            keys = ("edges",)
        else:
            keys = ("dataset", "shards_done", "shards_skipped", "shards_derived", "documents", "rows", "failures")
        out[name] = {k: s[k] for k in keys if k in s}
    return out


def _runs(output: JobOutput) -> tuple[RunStatus | None, RunStatus | None, dict[str, Any] | None]:
    """(the newest run, the newest finished run, the newest run's record)."""
    events = output.run_events()
    by_run: dict[str, list[dict[str, Any]]] = {}
    for e in events:  # oldest first
        by_run.setdefault(e["run_id"], []).append(e)
    if not by_run:
        return None, None, None
    runs: list[RunStatus] = []
    records: list[dict[str, Any]] = []
    for run_id, evs in by_run.items():
        last = evs[-1]
        record = last["record"] or {}
        outcome = last["event"] if last["event"] != "started" else "running"
        started = next((e["event_time"] for e in evs if e["event"] == "started"), evs[0]["event_time"])
        runs.append(
            RunStatus(
                run_id=run_id,
                outcome=outcome,
                started_at=_iso(started),
                ended_at=None if outcome == "running" else _iso(last["event_time"]),
                seconds=last.get("seconds"),
                stages=_stages(record),
                failures=len(last.get("failures") or []),
                error=record.get("error"),
            )
        )
        records.append(record)
    # Runs in the order they started (the events are oldest first, so dict order is that order).
    finished = [r for r in runs if r.outcome == "finished"]
    return runs[-1], (finished[-1] if finished else None), records[-1]


def _tables(output: JobOutput) -> dict[str, TableStatus]:
    out = {}
    for name, loc in output.tables().items():
        table = Table(loc)
        files = table.files()
        out[name] = TableStatus(version=table.version, rows=sum(f.rows for f in files.values()), files=len(files))
    return out


def _newest_input(output: JobOutput) -> tuple[dict[str, Any] | None, int]:
    if not Table.exists(output.documents):
        return None, 0
    from pipeline.store.documents import Documents

    docs = Documents(output.documents)
    applied = docs.inputs_applied()
    for commit in docs.table.commit_metadata(_HISTORY):
        inputs = commit.get("inputs")
        if inputs:
            newest = dict(inputs[-1])
            stamp = commit.get("timestamp")
            if isinstance(stamp, (int, float)):  # delta-rs: milliseconds since the epoch
                stamp = _dt.datetime.fromtimestamp(stamp / 1000, _dt.timezone.utc)
            newest["applied_at"] = _iso(stamp)
            newest["table_version"] = commit.get("version")
            return {k: newest[k] for k in ("name", "records", "applied_at", "table_version") if k in newest}, applied
    return None, applied


def next_due(schedule: str, last_start: _dt.datetime) -> tuple[_dt.datetime, _dt.datetime] | None:
    """(when the next run is due, when it is overdue) after a finished run started at ``last_start``;
    None for ``once``."""
    if schedule == "once":
        return None
    if schedule == "monthly":
        month = last_start.month % 12 + 1
        year = last_start.year + (last_start.month == 12)
        day = min(last_start.day, [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28,
                                   31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1])  # fmt: skip
        due = last_start.replace(year=year, month=month, day=day)
        return due, due + (due - last_start) * GRACE
    period = PERIODS[schedule]
    assert period is not None
    return last_start + period, last_start + period + period * GRACE


def _schedule(schedule: str | None, last_finished: RunStatus | None, now: _dt.datetime) -> ScheduleStatus | None:
    if schedule is None:
        return None
    if last_finished is None or last_finished.started_at is None:
        return ScheduleStatus(schedule, "never run", None, None)
    due = next_due(schedule, _dt.datetime.fromisoformat(last_finished.started_at))
    if due is None:
        return ScheduleStatus(schedule, "done", None, None)
    at, late = due
    state = "overdue" if now >= late else "due" if now >= at else "not due"
    return ScheduleStatus(schedule, state, _iso(at), _iso(late))


def output_status(
    out: str, schedule: str | None = None, *, now: _dt.datetime | None = None, dest: str | None = None
) -> OutputStatus:
    """The status of the output at ``out``. ``schedule``: the job's (from its job file); by default
    the one the last run recorded. ``dest``: a ``pubmed`` job's synced files, to say how far the
    corpus is behind the mirror.

    :raises StoreError: ``out`` holds no biomine output (no tables, no runs).
    """
    from pipeline.store.lease import Lease

    output = JobOutput(out)
    output.refuse_table_path()
    tables = _tables(output)
    owner = output.owner()
    if not tables and owner is None:
        raise StoreError(
            f"{output.root} holds no biomine output (no Delta tables, no _job.json): give the [job] output of a job "
            "or the --out of an ingest/fetch",
            setting="output",
        )
    last, finished, record = _runs(output)
    if schedule is None and record:
        schedule = ((record.get("job") or {}).get("spec") or {}).get("job", {}).get("schedule", "once")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    newest, applied = _newest_input(output)
    holder = Lease(output.root, what="biomine status").holder()
    source = (owner or {}).get("source")
    return OutputStatus(
        output=str(output.root),
        job=(owner or {}).get("name"),
        source=source.get("kind") if isinstance(source, dict) else source,
        checked_at=_iso(now) or "",
        last_run=last,
        last_finished=finished,
        tables=tables,
        newest_input=newest,
        inputs_applied=applied,
        lease=holder,
        schedule=_schedule(schedule, finished, now),
        mirror=_mirror(dest, newest) if dest else None,
    )


def _mirror(dest: str, newest: dict[str, Any] | None) -> dict[str, Any]:
    from pipeline.pubmed.sync import mirror_status

    return mirror_status(dest, str(newest["name"]) if newest and newest.get("name") else None)


def _ago(then: str | None, now: _dt.datetime) -> str:
    from pipeline.progress import duration

    if then is None:
        return "?"
    delta = (now - _dt.datetime.fromisoformat(then)).total_seconds()
    return f"{then} ({duration(abs(delta))} {'ago' if delta >= 0 else 'from now'})"


def format_status(s: OutputStatus) -> str:
    """The status as a few aligned lines for a terminal."""
    from pipeline.progress import duration

    now = _dt.datetime.fromisoformat(s.checked_at)
    lines = [f"output    {s.output}" + (f"  (job {s.job!r}, source {s.source})" if s.job else "")]
    if s.last_run is None:
        lines.append("last run  none recorded")
    else:
        r = s.last_run
        took = f" in {duration(r.seconds)}" if r.seconds is not None else ""
        lines.append(f"last run  {r.outcome}{took}, started {_ago(r.started_at, now)}  (run {r.run_id})")
        if r.error:
            lines.append(f"          {r.error.splitlines()[0][:300]}")
        if s.last_finished is not None and s.last_finished is not r:
            f = s.last_finished
            lines.append(f"last ok   finished, started {_ago(f.started_at, now)}  (run {f.run_id})")
        shown = s.last_finished if r.outcome != "finished" and s.last_finished is not None else r
        # The stages in the order a run goes through them (the record's JSON sorts its keys).
        order = sorted(shown.stages, key=lambda n: (n != "documents", n == "kb"))
        for name, st in ((n, shown.stages[n]) for n in order):
            if name == "documents":
                lines.append(
                    f"  documents  {st.get('files', 0)} input file(s) applied ({st.get('files_skipped', 0)} already "
                    f"held): {st.get('added', 0)} new, {st.get('replaced', 0)} revised, {st.get('deleted', 0)} deleted"
                    + (f", {st['dropped']} dropped (not in the new baseline)" if st.get("dropped") else "")
                    if st.get("kind") == "files"
                    else f"  documents  {st.get('documents', 0)} fetched"
                )
            elif name == "kb":
                lines.append(f"  kb         rebuilt: {st.get('edges', 0)} edges")
            else:
                lines.append(
                    f"  {name:<10} {st.get('shards_done', 0)} files computed ({st.get('documents', 0)} documents), "
                    f"{st.get('shards_skipped', 0)} kept, {st.get('shards_derived', 0)} copied; "
                    f"{st.get('failures', 0)} failed"
                )
    lines.append("tables")
    width = max((len(n) for n in s.tables), default=0)
    for name, t in s.tables.items():
        lines.append(f"  {name:<{width}}  version {t.version:>5}  {t.rows:>12,} rows  {t.files:>6,} files")
    if s.newest_input is not None:
        n = s.newest_input
        lines.append(
            f"newest input  {n.get('name')}, applied {_ago(n.get('applied_at'), now)}; {s.inputs_applied} input file(s) in all"
        )
    if s.mirror is not None:
        m = s.mirror
        if m["newest_listed"] is None:
            lines.append(f"mirror    {m['dest']}: never synced")
        else:
            far = "" if m["behind"] is None else "; up to date" if m["behind"] == 0 else f"; {m['behind']} files behind"
            lines.append(
                f"mirror    newest listed {m['newest_listed']}, checked {_ago(m['checked_at'], now)}; "
                f"{m['verified']} files verified in {m['dest']}{far}"
            )
    if s.lease is None:
        lines.append("lease     free: no run is writing this output")
    else:
        h = s.lease
        lines.append(
            f"lease     held by {h.get('what')} (run {h.get('run_id')}, host {h.get('host')}, pid {h.get('pid')}), "
            f"since {h.get('taken_at')}, until {h.get('expires')}"
        )
    if s.schedule is not None:
        sc = s.schedule
        if sc.next_due is None:
            lines.append(f"schedule  {sc.schedule}: {sc.state}")
        else:
            lines.append(
                f"schedule  {sc.schedule}: {sc.state}; next run due {_ago(sc.next_due, now)}, "
                f"overdue after {sc.overdue_after}"
            )
    for item in s.needs_attention:
        lines.append(f"attention {item}")
    return "\n".join(lines)
