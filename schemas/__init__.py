"""Arrow/Parquet schemas of every dataset biomine writes, each carrying a schema version."""
