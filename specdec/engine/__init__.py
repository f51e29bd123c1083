"""Speculative decoding engine (see docs/architecture.md for the module map).

Import from the modules: ``drafter`` (EdgeDecoder, DecodeConfig), ``verifier`` (Verifier),
``verifier_settings`` (VerifierSettings, torch-free), ``local`` (LocalSpeculativeDecoder), ...
"""
