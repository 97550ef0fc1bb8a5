"""Training: loss, freezing by component, optimizer, the pure jitted train step."""
