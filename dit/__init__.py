"""Latent Diffusion Transformer (Stage 2)."""
