"""The ``runs`` table of a job's output: one row per event of a run (``biomine status`` reads it).

==============  ===========================================================================
run_id          a random id per run
job             the job's name (``biomine ingest``/``biomine fetch`` for their outputs)
event           ``started`` | ``finished`` | ``failed`` | ``interrupted``
event_time      when (UTC)
seconds         the run's duration so far (null at ``started``)
versions        on ``finished``: the version of every table of the output after the run, which
                together are one consistent snapshot (``biomine query`` reads it)
failures        the documents whose task failed (task, pmid, version, error)
record          the whole run record as JSON: the job, models and their checksums, code version,
                counts and timings per stage, what was redone and why
==============  ===========================================================================
"""

from __future__ import annotations

import pyarrow as pa

from ._rows import cast_rows, schema_metadata

SCHEMA_NAME = "runs"
SCHEMA_VERSION = 1

FAILURE = pa.struct([("task", pa.string()), ("pmid", pa.int64()), ("version", pa.int64()), ("error", pa.string())])

RUN_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("job", pa.string()),
        pa.field("event", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("seconds", pa.float64()),
        pa.field("versions", pa.map_(pa.string(), pa.int64())),
        pa.field("failures", pa.list_(FAILURE)),
        pa.field("record", pa.string()),
    ],
    metadata=schema_metadata(SCHEMA_NAME, SCHEMA_VERSION),
)


def cast_batch(rows) -> pa.Table:
    return cast_rows(rows, RUN_SCHEMA)
