"""Model training: everything that makes the artefacts in ``models/``, nothing that serves them.

Not installed on robots or cloud servers (``setup.py`` ships the runtime packages only): the
runtime and ``bench/`` find the trained folders through :mod:`specdec.models.artefacts`, and
``scripts/make_models.py`` (``make models``) is the one entry point that runs what is here.

  teacher      - label data with a frozen target (top-k next-token distributions, hidden states)
  losses       - KL on a candidate vocabulary (cheap on CPU), full-vocabulary statistics
  train_exits  - train early-exit adapters of any supported target (KL to the final layer)
  text/        - the SmolLM2 text pair: gguf conversion, corpora, draft distillation, evaluation
  go2_vlm/     - the Go2 VLM pair: model spec, simulator data, training, closed-loop evaluation,
                 model card (``python -m training.go2_vlm --train --eval --card``)
"""
