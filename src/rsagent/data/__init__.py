"""Dataset loaders: each yields samples (image path, query, ground truth)."""
