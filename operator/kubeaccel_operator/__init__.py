"""kubeaccel_operator: the kopf control plane for AcceleratedModel resources."""
