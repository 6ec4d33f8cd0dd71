"""The segmenter service's domain (filled in by the segmenter issue)."""
