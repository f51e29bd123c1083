"""Model-side pieces of specdec: adapters over HF models, early exits, fingerprints."""
