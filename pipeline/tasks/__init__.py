"""Mining tasks: NER, relation extraction and summarisation, and their model-independent parts.

The contract (:mod:`pipeline.tasks.base`), the typed settings of each task (:mod:`pipeline.tasks.options`)
and the table of tasks and their datasets (:mod:`pipeline.tasks.registry`), then the tasks:

- :mod:`pipeline.tasks.ner`: ``NerTask`` (token classification, windows, spans), ``train_ner``,
  ``evaluate_ner``.
- :mod:`pipeline.tasks.re`: ``RelationTask`` (prompt checkpoints, greedy decoding on the engine, the
  released grammars), ``evaluate_re``.
- :mod:`pipeline.tasks.summarize`: ``SummarizeTask`` (prompt template, length-bounded generation).

What they are built on:

- :mod:`pipeline.tasks.decoding`: ``GreedyDecoder``, BioGPT's greedy decoding on the engine (RE, summaries).
- :mod:`pipeline.tasks.re_format`: task inputs and gold targets exactly as BioGPT's ``rebuild_data.py``
  built them, and the prompt-model input ids (a checkpoint's settings: :mod:`biogpt.task_spec`).
- :mod:`pipeline.tasks.re_grammar`: parsers for the released RE output grammars (never dropping
  unparseable output), BC5CDR name -> MeSH mapping, evidence spans and relation rows.
- :mod:`pipeline.tasks.re_data`: readers for the DDI / KD-DTI / BC5CDR ``test.json`` layouts.
- :mod:`pipeline.tasks.pubtator`: the PubTator reader (NER training and evaluation, BC5CDR).
- :mod:`pipeline.tasks.re_eval`: the original hard-match evaluation (DDI, KD-DTI) and the BC5CDR CID
  pair evaluation.
- :mod:`pipeline.tasks.ner_spans`: BIO/BIOES tagging over token offsets, windowing, strict mention metrics.
- :mod:`pipeline.tasks.tiny`: ``fit_prompt_model``, tiny fitted prompt models for the tests and the demo.

User documentation: ``docs/tasks.md``, ``docs/ner.md``; the layout: ``docs/architecture.md``.
"""
