"""Which image each container runs: shards and Jobs of a GPU target use the GPU image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubeaccel_api.target import serving_target
from kubeaccel_api.v1alpha1 import AcceleratedModel

if TYPE_CHECKING:
    from kubeaccel_operator.settings import Settings


def serving_image(res: AcceleratedModel, cfg: Settings) -> str:
    """spec.runtime.image, else the GPU runtime image for a GPU target, else the runtime image."""
    if res.spec.runtime.image:
        return res.spec.runtime.image
    return cfg.gpu_runtime_image if serving_target(res.spec).is_gpu else cfg.runtime_image


def optimizer_image(res: AcceleratedModel, cfg: Settings) -> str:
    """The optimization Job's image.

    A GPU target's Job runs on exactly the image that will serve it: the providers it
    measures and the TensorRT engines it builds belong to that image's onnxruntime and
    TensorRT. A CPU target's Job runs on the optimizer image.
    """
    if serving_target(res.spec).is_gpu:
        return serving_image(res, cfg)
    return cfg.optimizer_image
