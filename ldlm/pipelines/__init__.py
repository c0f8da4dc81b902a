"""Generation without Lightning: the diffusers pipeline, long documents, gradient guidance and the loaders."""
