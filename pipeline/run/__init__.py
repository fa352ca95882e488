"""Running jobs: the job file (:mod:`.jobspec`), the job runner (:mod:`.runner`) and the Ray Data
stages that map a task over document shards (:mod:`.stages`)."""
