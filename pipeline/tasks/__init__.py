"""Mining tasks: NER, relation extraction, summarisation and PubMedQA answers, and their model-independent parts.

What runs in a job. The contract (:mod:`pipeline.tasks.base`), the typed settings of each task
(:mod:`pipeline.tasks.options`) and the table of tasks and their datasets, built from the task
classes (:mod:`pipeline.tasks.registry`), then the tasks:

- :mod:`pipeline.tasks.ner`: ``NerTask`` (token classification, windows, spans).
- :mod:`pipeline.tasks.re`: ``RelationTask`` (prompt checkpoints, greedy decoding on the engine, the
  released grammars).
- :mod:`pipeline.tasks.summarize`: ``SummarizeTask`` (prompt template, length-bounded generation).
- :mod:`pipeline.tasks.qa`: ``QATask`` (PubMedQA checkpoints, a question per job or the title, the
  original answer grammar, also scored by ``biomine eval qa``).
- :mod:`pipeline.tasks.classify`: ``ClassifyTask`` (the HoC prompt checkpoint per sentence, the
  document's labels as the union, each with its best sentence).

What they are built on:

- :mod:`pipeline.tasks.decoding`: ``GreedyDecoder``, BioGPT's greedy decoding on the engine (RE, summaries).
- :mod:`pipeline.tasks.re_format`: task inputs and gold targets exactly as BioGPT's ``rebuild_data.py``
  built them, and the prompt-model input ids (a checkpoint's settings: :mod:`biogpt.task_spec`).
- :mod:`pipeline.tasks.re_grammar`: parsers for the released RE output grammars (never dropping
  unparseable output), BC5CDR name -> MeSH mapping, evidence spans and relation rows.
- :mod:`pipeline.tasks.hoc_labels`: the 11 HoC classes and the released answer parsing (``classify``
  and ``biomine eval hoc``).
- :mod:`pipeline.tasks.linking`: mentions to concept identifiers (the matching rules, ``Linker``).
- :mod:`pipeline.tasks.vocabulary`: concept dictionaries from MeSH, DrugBank and PubTator files.
- :mod:`pipeline.tasks.pubtator`: the PubTator reader (NER training and evaluation, BC5CDR, dictionaries).
- :mod:`pipeline.tasks.ner_spans`: BIO/BIOES tagging over token offsets, windowing, strict mention metrics.
- :mod:`pipeline.tasks.tiny`: ``fit_prompt_model``, tiny fitted prompt models for the tests and the demo.

Fine-tuning (``train_ner``) lives in :mod:`pipeline.training`, benchmark scoring (``evaluate_ner``,
``evaluate_re``, the original RE scoring, ``evaluate_linking``) in :mod:`pipeline.evaluation`; both
build on this package, which never imports them.

User documentation: ``docs/tasks.md``, ``docs/ner.md``; the layout: ``docs/architecture.md``.
"""
