"""PubMed in: the E-utilities client (:mod:`.eutils`), the streaming XML parser (:mod:`.parser`) and
ingestion of baseline/update files (:mod:`.ingest`), all writing through :mod:`pipeline.store`."""
