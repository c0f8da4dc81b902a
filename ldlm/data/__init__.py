"""Training data: corpora, token blocks with teacher features, latent windows, token windows and labelled windows."""

IGNORE = -100  # target of a token position without a label (cross-entropy's ignore_index)
