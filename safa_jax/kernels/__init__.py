"""Compiled kernels that JAX calls through XLA FFI."""
