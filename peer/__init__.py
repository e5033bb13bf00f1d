"""The volunteer daemon: `swarm join` builds the model and data, syncs with the swarm and trains."""
