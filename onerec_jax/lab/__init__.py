"""The lab, above the product layers (the product never imports it): synthetic data and
training for the demo model, the FP16-vs-FP8 quality evaluation (`onerec-jax eval`) and
the weight/activation statistics (`onerec-jax stats`)."""
