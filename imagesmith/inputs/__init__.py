"""What a build is made of: packages (package files, Spack prefixes, build caches, environments)
and environment modifications, loaded in dependency order.
"""
