"""Scoring models on benchmark data (``biomine eval ner|re|qa|hoc|link``) and the reports' text.

Each module runs a task's model as a job would (the classes and rules of :mod:`pipeline.tasks`) over
gold data, and scores it:

- :mod:`pipeline.evaluation.ner`: ``evaluate_ner`` (strict mention P/R/F1 on a PubTator file),
  ``predict_pubtator``, ``format_ner_report``.
- :mod:`pipeline.evaluation.re`: ``evaluate_re`` (a prompt checkpoint on a BioGPT ``{split}.json``,
  the original protocol by default), ``has_gold``, ``format_re_report``.
- :mod:`pipeline.evaluation.re_scoring`: the original hard-match evaluation (DDI, KD-DTI) and the
  BC5CDR CID pair evaluation, from generated text (``score_generations``).
- :mod:`pipeline.evaluation.re_data`: readers for the DDI / KD-DTI / BC5CDR ``{split}.json`` layouts.
- :mod:`pipeline.evaluation.generated`: ``evaluate_generated`` (PubMedQA accuracy and HoC micro-F1 as
  BioGPT's examples/QA-PubMedQA and DC-HoC score them, from a generations file or a model),
  ``format_generated_report``; :mod:`pipeline.evaluation.qa` and :mod:`pipeline.evaluation.hoc`: their
  gold readers, answer extraction and metrics.
- :mod:`pipeline.evaluation.linking`: ``evaluate_linking`` (gold PubTator mentions against their ids),
  ``format_linking_report``.

:mod:`pipeline.tasks` never imports this package (``docs/architecture.md``).
"""
