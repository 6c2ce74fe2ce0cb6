"""edged: an edge gateway daemon for plants.

Drivers read field devices, the core calibrates and scores every value, the buffer stores every
sample durably, and uplinks forward them with store-and-forward replay.
"""

__version__ = "0.1.0"
