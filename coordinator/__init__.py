"""The organiser side: `swarm launch` starts the first DHT nodes, publishes the recipe, follows the run and checkpoints it."""
