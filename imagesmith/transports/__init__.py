"""Where images are read and written, one module per location kind (its location, source, origin
and sink): registry.py, layout.py, archive.py, daemon.py; base.py holds what they share and
locations.py parses and opens them.
"""
