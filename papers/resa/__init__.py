"""ReSA rectified sparse decoding."""
