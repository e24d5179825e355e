"""Pure builders of the Kubernetes objects an AcceleratedModel owns (plain dicts out)."""
