"""Image sets, letterbox preprocessing, labels, and the synthetic shapes generator."""
