"""The segmenter service's entrypoints (filled in by the segmenter issue)."""
