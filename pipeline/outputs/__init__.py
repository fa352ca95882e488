"""What analysts read: the drug-drug-interaction knowledge base (:mod:`.kb`) and SQL over a job's
datasets with DuckDB (:mod:`.query`)."""
