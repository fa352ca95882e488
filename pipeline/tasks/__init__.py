"""Mining tasks: the model-independent parts of NER, relation extraction and the task contract.

- :mod:`pipeline.tasks.re_format`: task inputs exactly as BioGPT's ``rebuild_data.py`` built them, the
  prompt-model input ids, gold target strings, and the ``biomine_task.json`` settings of a checkpoint.
- :mod:`pipeline.tasks.re_grammar`: parsers for the released RE output grammars (never dropping
  unparseable output), BC5CDR name -> MeSH mapping, evidence spans and relation rows.
- :mod:`pipeline.tasks.re_data`: readers for the DDI / KD-DTI / BC5CDR ``test.json`` layouts and PubTator.
- :mod:`pipeline.tasks.re_eval`: the original hard-match evaluation (DDI, KD-DTI) and the BC5CDR CID
  pair evaluation.
- :mod:`pipeline.tasks.ner_spans`: BIO/BIOES tagging over token offsets, windowing, strict mention metrics.

User documentation: ``docs/tasks.md``.
"""
