"""Character chat bot: config, characters, prompts, history, inference and entry points."""
