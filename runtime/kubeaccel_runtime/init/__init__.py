"""`kubeaccel init`: a complete, commented AcceleratedModel for a model file.

probe.py reads the model (digest, format, contract) and any data files; draft.py turns
those facts and the user's choices into a spec; render.py writes it as commented YAML;
cli.py is the command, and `spec_for_model` is what `kubeaccel run MODEL` reuses.
"""
