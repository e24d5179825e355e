"""Local runs: the whole AcceleratedModel flow on one machine, no cluster."""
