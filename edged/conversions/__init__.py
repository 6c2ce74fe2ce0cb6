"""Pure, allocation-light conversions from raw field signals to engineering values.

RTD resistance (``rtd``), thermocouple EMF (``thermocouple``) and 4-20 mA loops (``loop``):
no I/O and no state, so drivers and tests can call them anywhere.
"""
