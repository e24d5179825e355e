# Example models: `make examples` trains and exports every model examples/*.yaml points at
# (scikit-learn's bundled digits, fixed seed, ~1 minute on 2 cores) and makes each YAML's
# sha256 match the built file. Included by the main Makefile.

PY ?= .venv/bin/python

EXAMPLES_DIR := examples
EXAMPLE_MODELS_DIR := $(EXAMPLES_DIR)/models
ZOO_SOURCES := $(wildcard runtime/kubeaccel_runtime/zoo/*.py)
EXAMPLE_MODEL_NAMES := cnn mlp transformer
EXAMPLE_OUTPUTS := \
	$(foreach m,$(EXAMPLE_MODEL_NAMES),$(EXAMPLE_MODELS_DIR)/$(m).onnx) \
	$(foreach m,$(EXAMPLE_MODEL_NAMES),$(foreach s,train calib val,$(EXAMPLE_MODELS_DIR)/digits-$(s)-$(m).npz))

.PHONY: examples examples-clean

# Rebuild only when an output is missing or older than the zoo sources; then, every time,
# make the YAML digests match the files on disk (cheap: hashes three files, no torch).
examples: $(EXAMPLE_OUTPUTS) ## build + train the example models (examples/models) and sync YAML digests
	$(PY) -m kubeaccel_runtime.zoo --out $(EXAMPLE_MODELS_DIR) --examples $(EXAMPLES_DIR) --sync-only

# One run writes every output (grouped target, GNU make >= 4.3); `examples` then syncs.
# $(STAMP), when the main Makefile defines it, is the installed .venv: needed first, but
# never a reason to retrain (order-only).
$(EXAMPLE_OUTPUTS) &: $(ZOO_SOURCES) | $(STAMP)
	$(PY) -m kubeaccel_runtime.zoo --out $(EXAMPLE_MODELS_DIR) --no-sync

examples-clean: ## delete the built example models and data
	rm -f $(EXAMPLE_OUTPUTS)
