"""Hydra configuration shipped with toolgym (``toolgym train`` composes it)."""
