"""The segmenter service's adapters (filled in by the segmenter issue)."""
