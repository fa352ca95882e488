"""biomine pipeline: PubMed ingestion, task stages on Ray, Parquet outputs and the ``biomine`` CLI."""
