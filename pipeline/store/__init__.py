"""Storage: the one atomic writer (:mod:`.atomic`) and the manifest-backed document-shard store
(:mod:`.shards`). Nothing else in the pipeline writes a file that readers may see half-written."""
