"""Fine-tuning BioGPT heads for the mining tasks: one module per head, the training loop they share.

- :mod:`pipeline.training.loop`: :class:`~pipeline.training.loop.TrainingSettings` (what every
  fine-tuning run is given: data, base, output, optimiser and loop settings) and
  :func:`~pipeline.training.loop.fit` (AdamW, warm-up then linear decay, gradient clipping, bfloat16
  autocast on CUDA, seeded shuffling), which knows nothing of the head but how to batch its examples.
- :mod:`pipeline.training.ner`: token classification for NER (``biomine train ner``):
  :class:`~pipeline.training.ner.NerTrainingSettings` and :func:`~pipeline.training.ner.train_ner`.

- :mod:`pipeline.training.classify`: multi-label sequence classification (``biomine train classify``)
  from a ``text<TAB>a|b`` TSV: :class:`~pipeline.training.classify.ClassifyTrainingSettings` and
  :func:`~pipeline.training.classify.train_classify`.

A new head is a module of its own here: its settings extend
``TrainingSettings``, it builds its examples and a ``collate`` and calls ``fit``. What a model does in
a job stays in :mod:`pipeline.tasks`, which this package builds on and which never imports it
(``docs/architecture.md``).
"""
