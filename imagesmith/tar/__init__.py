"""The bytes of a layer: the tar format (one reader), the writer, compression, building a layer in
one streaming pass, and safe unpacking.
"""
