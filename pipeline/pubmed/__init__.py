"""PubMed in: the E-utilities client (:mod:`.eutils`), a query fetched into an output (:mod:`.fetch`), the
streaming XML parser (:mod:`.parser`), ingestion of baseline/update files (:mod:`.ingest`) and the verified
copy of NCBI's files they come from (:mod:`.sync`), all writing through :mod:`pipeline.store`."""
