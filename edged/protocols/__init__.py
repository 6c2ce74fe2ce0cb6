"""Protocol support more than one plugin needs (e.g. the MQTT session of the mqtt and sparkplug
uplinks). Not a plugin: imported only by plugins, and lazily by CLI commands that need it. A module
here may import its protocol's heavy library; no plugin imports another plugin."""
