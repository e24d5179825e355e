"""`python -m kubeaccel_runtime.gpucheck`."""

from kubeaccel_runtime.gpucheck.cli import main

raise SystemExit(main())
