"""The example model set: small models built in code and trained on bundled or generated data.

`python -m kubeaccel_runtime.zoo --out examples/models` trains and exports a CNN, an MLP and
a tiny transformer on scikit-learn's bundled handwritten digits, and a text embedding model
(int64 token ids) on generated topic documents (`topics`), writes their validation and
calibration data, and keeps the digests in `examples/*.yaml` current.

Only this package imports torch (and only in its training/export modules); the serve and
operator processes never import it.
"""
