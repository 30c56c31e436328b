"""The build pipeline, one job per module: results (options and results), layers, assemble,
destinations, checks, and run (the entry points).
"""
