"""The stages: each a pure function of (input artifact, config, data, seed) -> output artifact."""
