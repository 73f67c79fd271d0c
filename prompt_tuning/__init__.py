"""Soft prompt tuning of a frozen T5 in JAX/Flax."""
