"""Core abstractions: Artifact, Config, the technique registry, recipes and the run context."""
