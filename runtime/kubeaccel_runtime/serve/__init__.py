"""`kubeaccel serve`: the Open Inference Protocol v2 server of one model shard.

Modules: session (verify + load), contract/validation/guard (what goes in and out),
schemas/codec (the wire format), batching, chain (forwarding to the next shard),
metrics, app (`create_app`), server (uvicorn with draining), cli. Nothing here imports
torch or kopf.
"""
