"""`kubeaccel-operator`: run the kopf operator with the settings from the environment."""

from __future__ import annotations

import importlib
import sys
import threading

import kopf

from kubeaccel_operator.settings import SettingsError, get_settings

LOG_FORMATS = {
    "json": kopf.LogFormat.JSON,
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
}


def main() -> None:
    """Validate settings, register the handlers and run kopf until a signal stops it."""
    try:
        cfg = get_settings()
    except SettingsError as exc:
        print(f"kubeaccel-operator: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    kopf.configure(verbose=cfg.verbose, log_format=LOG_FORMATS[cfg.log_format], log_refkey="object")
    # Registers the handlers (decorators run at import).
    handlers = importlib.import_module("kubeaccel_operator.handlers")
    stop = threading.Event()
    if cfg.resync_seconds > 0:
        threading.Thread(
            target=handlers.resync_forever, args=(stop,), name="resync", daemon=True
        ).start()
    threading.Thread(
        target=handlers.poll_rollouts_forever, args=(stop,), name="rollouts", daemon=True
    ).start()
    kopf.run(
        standalone=cfg.standalone,
        peering_name=cfg.peering_name,
        clusterwide=not cfg.namespaces,
        namespaces=list(cfg.namespaces),
        liveness_endpoint=cfg.liveness_endpoint,
    )
    stop.set()


if __name__ == "__main__":
    main()
