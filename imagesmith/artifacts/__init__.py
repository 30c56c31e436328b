"""What is attached to an image after it is written: SBOMs, referrers, signatures."""
