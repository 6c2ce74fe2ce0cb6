"""Process alarms (docs/alarms.md): HI/HIHI/LO/LOLO, deviation, rate of change, bad quality,
discrete and drift alarms on measured or computed tags, with the ISA-18.2 states, acknowledge and
shelve through the command gate, stored in the buffer as events so every uplink delivers them.

- `config`: `[alarms]` and `[[alarms.tags]]`, checked against the whole config;
- `state`: the pure state machine (detectors with deadband, on/off delays, the four states);
- `model`: an alarm event, as a stored sample and as uplinks publish it;
- `engine`: feeding, flood protection, commands, recovery from the buffer;
- `control`: `edged ack` / `edged alarms` and the gate's handler.
"""
