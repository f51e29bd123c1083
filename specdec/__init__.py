"""specdec: ROS-free core of edge/cloud speculative decoding with early exits.

Layers (each a subpackage or module with one job):
  protocol    - edge<->cloud messages (dataclasses), the single source of truth
  models      - adapters over Hugging Face models, early-exit heads, fingerprints
  engine      - speculative decoding: sampling rules, cloud verifier, edge drafter
  transport   - how protocol messages move between edge and cloud
"""

__version__ = "0.1.0"
