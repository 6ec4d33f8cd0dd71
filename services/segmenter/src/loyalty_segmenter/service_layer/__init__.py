"""The segmenter service's service layer (filled in by the segmenter issue)."""
