"""onerec-jax."""
