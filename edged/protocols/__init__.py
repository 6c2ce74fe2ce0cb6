"""Protocol-support code shared by more than one plugin (e.g. `opcua/`: the OPC UA driver and the
OPC UA server uplink). Not a plugin: imported only by plugins, and lazily by the CLI commands that
need it, so the core never loads a protocol library; a module here may import its protocol's library.
"""
