"""Thin absl entry points, one folder per task; the work lives in `gpt2_tf`."""
