"""MENTOR and the multimodal recommenders it is compared with, in JAX."""

from mentor_jax import console as _console

# Before any JAX backend starts: no "Unable to initialize backend 'tpu'".
_console.quiet_backend_probe()
