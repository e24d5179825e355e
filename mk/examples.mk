# Example models: the models and data examples/*.yaml point at are committed
# (examples/models), so their sha256 lines hold on every machine and every image.
#   make examples           check that every YAML digest matches its committed model (no torch)
#   make examples-rebuild   retrain + export on scikit-learn's bundled digits (fixed seed,
#                           ~1 minute on 2 cores) and rewrite the YAML digests; commit both
# Another CPU may round differently while training and give other bytes: rebuild only when
# the zoo changes, on one machine, and commit what it wrote.

PY ?= .venv/bin/python

EXAMPLES_DIR := examples
EXAMPLE_MODELS_DIR := $(EXAMPLES_DIR)/models

.PHONY: examples examples-rebuild

examples: | $(STAMP) ## check that examples/*.yaml digests match the committed models
	$(PY) -m kubeaccel_runtime.zoo --out $(EXAMPLE_MODELS_DIR) --examples $(EXAMPLES_DIR) --check

examples-rebuild: | $(STAMP) ## retrain the example models (examples/models) and sync YAML digests
	$(PY) -m kubeaccel_runtime.zoo --out $(EXAMPLE_MODELS_DIR) --examples $(EXAMPLES_DIR)
