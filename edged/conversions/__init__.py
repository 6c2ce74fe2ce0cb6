"""Pure conversions from raw field signals to engineering values.

RTD resistance (``rtd``), thermocouple EMF (``thermocouple``) and 4-20 mA loops (``loop``).
No I/O and no state, so drivers and tests can call them anywhere, on the hot path included.
"""
