"""Mining tasks: NER, relation extraction and summarisation, and their model-independent parts.

The tasks (the contract of :mod:`pipeline.tasks.base`; looked up by name in :mod:`pipeline.tasks.registry`):

- :mod:`pipeline.tasks.ner`: ``NerTask`` (token classification, windows, spans), ``train_ner``,
  ``evaluate_ner``.
- :mod:`pipeline.tasks.re`: ``RelationTask`` (prompt checkpoints, greedy decoding on the engine, the
  released grammars), ``evaluate_re``, ``fit_prompt_model`` (tiny models for tests and the demo).
- :mod:`pipeline.tasks.summarize`: ``SummarizeTask`` (prompt template, length-bounded generation).

What they are built on:

- :mod:`pipeline.tasks.re_format`: task inputs exactly as BioGPT's ``rebuild_data.py`` built them, the
  prompt-model input ids, gold target strings, and the ``biomine_task.json`` settings of a checkpoint.
- :mod:`pipeline.tasks.re_grammar`: parsers for the released RE output grammars (never dropping
  unparseable output), BC5CDR name -> MeSH mapping, evidence spans and relation rows.
- :mod:`pipeline.tasks.re_data`: readers for the DDI / KD-DTI / BC5CDR ``test.json`` layouts and PubTator.
- :mod:`pipeline.tasks.re_eval`: the original hard-match evaluation (DDI, KD-DTI) and the BC5CDR CID
  pair evaluation.
- :mod:`pipeline.tasks.ner_spans`: BIO/BIOES tagging over token offsets, windowing, strict mention metrics.

User documentation: ``docs/tasks.md``, ``docs/ner.md``.
"""
