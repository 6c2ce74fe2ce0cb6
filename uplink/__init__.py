"""Uplinks: one package per `type`, each exporting `Config` and `Uplink`."""
