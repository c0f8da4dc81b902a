"""Baselines to measure ldlm against: the same-size autoregressive model."""
