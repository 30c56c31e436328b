"""Local storage: the atomic blob store, the blob cache, and OCI layout directories."""
