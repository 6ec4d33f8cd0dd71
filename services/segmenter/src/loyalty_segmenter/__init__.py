"""The segmenter service: Member profiles (RFM, lifecycle, tags), segments, analytics."""
