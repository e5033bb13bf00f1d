"""swarm: volunteer distributed training on hivemind. Shared core: recipes, data, models, identity, records."""

__version__ = "0.1.0"
