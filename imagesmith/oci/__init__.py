"""Image values with no I/O: digests, media types, references, the OCI documents, images as values,
index documents, and the vocabulary imagesmith writes into images.
"""
