"""Model loading and the framework-neutral network description."""
