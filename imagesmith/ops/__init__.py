"""The operations besides building, each over the layers below: inspect, pull, merge (images into
an index, per-platform builds joined) and the repository indexes.
"""
