"""The HTTP API. It never imports torch."""
