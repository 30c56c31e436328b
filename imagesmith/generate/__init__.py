"""Generated files: Makefiles and CI pipelines for a stack."""
