"""Field drivers: one package per `type`, each exporting `Config` and `Driver`."""
