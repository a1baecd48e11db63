"""Video files (read, write, contact sheets) and training data (manifests, buckets, latent caches)."""
