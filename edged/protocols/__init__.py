"""Protocol-support code shared by more than one plugin: `mqtt.py` (the MQTT session of the mqtt
and sparkplug uplinks), `opcua/` (certificates, error mapping and values of the OPC UA driver and
the OPC UA server uplink), `payload.py` (batch encodings), `modbus.py` (the register codec of the
modbus driver and the modbus_server uplink: types, word and byte orders, scaling). Not a plugin:
imported only by plugins, and lazily by the CLI commands that need it, so the core never loads a
protocol library; a module here may import its protocol's heavy library. No plugin imports another
plugin.
"""
