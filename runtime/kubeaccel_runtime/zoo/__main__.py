"""`python -m kubeaccel_runtime.zoo`: build the example models and sync the example digests."""

from kubeaccel_runtime.zoo.cli import main

if __name__ == "__main__":
    main()
