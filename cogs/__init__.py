"""Discord extensions, one per feature. Each is thin over the services in `bot/`."""
