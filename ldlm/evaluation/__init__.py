"""Evaluation: the suite behind ``ldlm eval``, metrics, diagnostics, VAE reconstruction and text embeddings."""
