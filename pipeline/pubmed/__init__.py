"""PubMed in: the E-utilities client (:mod:`.eutils`), a query fetched into an output (:mod:`.fetch`), the
streaming XML parser (:mod:`.parser`) and ingestion of baseline/update files (:mod:`.ingest`), fetch and ingest
writing through :mod:`pipeline.store`."""
