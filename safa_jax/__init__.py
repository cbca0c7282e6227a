"""safa_jax: SAFA (Sample-Adaptive Feature Augmentation) for long-tailed classification in JAX.

Importing it changes nothing in the process: the CPU settings are the entry points' (process_settings.py).
"""
