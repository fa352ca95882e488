"""Storage: where files live (:mod:`.storage`), the Delta Lake tables of an output (:mod:`.tables`,
:mod:`.documents`, :mod:`.datasets`, :mod:`.output`), who may write them (:mod:`.lease`), models on any
storage (:mod:`.models`, :mod:`.releases`). The Delta log is the one truth of what is committed;
nothing in the pipeline writes a file that readers may see half-written."""
