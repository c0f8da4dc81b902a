"""ldlm: latent diffusion language models."""
